"""Evaluating checkpoints: exact metrics under the paper's test-time protocols, and ensembles.
May import: models, data_pipeline, train, runs, recovery, targets (cluster: connecting to Ray).

A RUN or CHECKPOINT becomes a checkpoint on this machine, checksums checked, in
orchestrator/recovery/checkpoints.py.

tta          the protocols: none, flip, 10crop, multiscale
scoring      view averaging, combining members (softmax, logits, vote), exact counts
loading      a worker's shard of the validation set as raw batches
runner       shards over Ray tasks, counts summed in the driver
records      what is logged to MLflow
api          evaluate() and ensemble(), which the CLI calls
"""

from orchestrator.evaluation.api import ensemble, evaluate

__all__ = ["ensemble", "evaluate"]
