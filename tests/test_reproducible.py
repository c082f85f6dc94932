"""Seeds reproduce by default: the session's trained run (one worker with two FFCV loader
threads, no training.deterministic) and a second run of the same spec log the same metrics at
every epoch (the augmentations are keyed by seed, epoch and image: data_pipeline.rng; the
loaders' own tests check that at the loader)."""

import pytest
from mlflow.tracking import MlflowClient

from job_fixtures import DEMO

pytestmark = pytest.mark.slow
EPOCH_METRICS = ("train_loss", "train_top1_error", "train_top5_error", "val_loss", "val_top1_error", "val_top5_error")


def epoch_metrics(uri: str, run_id: str) -> dict:
    client = MlflowClient(uri)
    return {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in EPOCH_METRICS}


def test_two_runs_of_one_spec_log_the_same_metrics(trained_run, session_store, ray_cluster, mlflow_uri, tmp_path):
    from orchestrator.spec import load_spec
    from orchestrator.targets.local import run_local

    sets = trained_run["sets"] + [f"checkpoint.storage={tmp_path / 'ckpt'}", f"tracking.tracking_uri={mlflow_uri}"]
    spec = load_spec(DEMO, sets)
    assert spec.data.augment == "cifar" and not spec.training.deterministic
    assert spec.scaling.cpus_per_worker == 2 and spec.data.num_workers is None  # two loader threads
    outcome = run_local(spec, str(DEMO))
    assert outcome.status == "FINISHED"
    first = epoch_metrics(session_store, trained_run["run_id"])
    assert all(len(first[key]) == 2 for key in EPOCH_METRICS), first
    assert epoch_metrics(mlflow_uri, outcome.run_id) == first
