"""What runs inside each Ray Train worker (loop, metrics, checkpoints, notices) and the Ray callbacks.
May import: spec, models, data_pipeline, runs (tracking and telemetry: what a worker and a callback record).
"""
