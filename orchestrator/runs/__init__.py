"""A run's record in MLflow: tracking, run record, logged model, system metrics, lookup, outcome, driver.
May import: spec, models, data_pipeline, train, recovery; its lifecycle (orch runs/status/logs/stop, for the CLI
alone) sits at the top and may import anything.
"""
