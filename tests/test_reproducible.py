"""Seeds reproduce by default: two runs of one spec, one worker with two FFCV loader threads and
no training.deterministic, log the same metrics at every epoch (the augmentations are keyed by
seed, epoch and image: data_pipeline.rng; the loaders' own tests check that at the loader)."""

import pytest
from mlflow.tracking import MlflowClient

from job_fixtures import DEMO, small_job

pytestmark = pytest.mark.slow
EPOCH_METRICS = ("train_loss", "train_top1_error", "train_top5_error", "val_loss", "val_top1_error", "val_top5_error")


def test_two_runs_of_one_spec_log_the_same_metrics(ray_cluster, small_fashion, mlflow_uri, tmp_path):
    from orchestrator.spec import load_spec
    from orchestrator.targets.local import run_local

    sets = small_job(small_fashion, tmp_path, workers=1) + [
        "data.max_train_samples=600",  # 6 steps an epoch: cheap, and enough for draws to matter
        "data.num_workers=2",
        "training.deterministic=false",
        f"tracking.tracking_uri={mlflow_uri}",
    ]
    spec = load_spec(DEMO, sets)
    assert spec.data.augment == "cifar" and not spec.training.deterministic
    client = MlflowClient(mlflow_uri)
    logged = []
    for _ in range(2):
        outcome = run_local(spec, str(DEMO))
        assert outcome.status == "FINISHED"
        logged.append(
            {key: [(m.step, m.value) for m in client.get_metric_history(outcome.run_id, key)] for key in EPOCH_METRICS}
        )
    first, second = logged
    assert all(len(first[key]) == 2 for key in EPOCH_METRICS), first
    assert first == second
