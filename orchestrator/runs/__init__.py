"""A run's record in MLflow and its lifecycle (orch runs/status/logs/stop: lifecycle.py, for the CLI alone)."""
