"""One rule for "best" (orchestrator/recovery/best.py): checkpoint.metric under checkpoint.mode, ties to
the later epoch, used by the best_* metrics, `orch runs`, and `--checkpoint best`."""

import json

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from orchestrator.errors import SpecError
from orchestrator.recovery.best import BestRule
from orchestrator.recovery.checkpoints import pick
from orchestrator.runs.lifecycle import summary
from orchestrator.runs.tracking import best_metrics, log_best
from orchestrator.spec import load_spec

from eval_fixtures import run_orch
from job_fixtures import DEMO

# (val_top1_error, val_top5_error) per epoch: top-1 is best at epoch 1, top-5 at epoch 2
EPOCHS = [(40.0, 9.0), (30.0, 8.0), (35.0, 5.0), (35.0, 5.0)]


def test_the_rule_ranks_by_metric_and_mode_with_ties_to_the_later_epoch():
    scored = [(epoch, top5, f"e{epoch}") for epoch, (_, top5) in enumerate(EPOCHS)]
    assert BestRule("val_top5_error", "min").pick(scored) == "e3"  # epochs 2 and 3 tie: the later
    assert BestRule("val_top5_error", "max").pick(scored) == "e0"
    assert BestRule().pick([(0, None, "a")]) is None
    assert BestRule.of({}) == BestRule("val_top1_error", "min")


def test_a_misspelled_metric_is_refused_when_the_spec_is_read(tmp_path):
    with pytest.raises(SpecError, match="checkpoint.metric"):
        load_spec(DEMO, ["checkpoint.metric=val_top1_eror"])
    code, _, stderr = run_orch("submit", DEMO, "--set", "checkpoint.metric=val_top1_eror", "--dry-run")
    assert code == 2 and "checkpoint.metric" in stderr and "Traceback" not in stderr


def test_checkpoint_best_follows_the_runs_metric(tmp_path):
    """Checkpoint dirs whose spec ranks by val_top5_error: best is epoch 3 (tied with 2, later)."""
    checkpoint = {"metric": "val_top5_error", "mode": "min"}
    for epoch, (top1, top5) in enumerate(EPOCHS):
        folder = tmp_path / f"epoch_{epoch:04d}"
        folder.mkdir()
        meta = {
            "epoch": epoch,
            "metrics": {"val_top1_error": top1, "val_top5_error": top5},
            "spec": {"checkpoint": checkpoint},
        }
        (folder / "meta.json").write_text(json.dumps(meta))
    assert pick(str(tmp_path), "best", "test").endswith("epoch_0003")
    checkpoint["metric"] = "val_top1_error"
    (tmp_path / "epoch_0003" / "meta.json").write_text(
        json.dumps({"epoch": 3, "metrics": {"val_top1_error": 35.0}, "spec": {"checkpoint": checkpoint}})
    )
    assert pick(str(tmp_path), "best", "test").endswith("epoch_0001")


def test_best_metrics_and_orch_runs_read_the_best_epoch(mlflow_uri):
    """best_* are the errors at the rule's best epoch, live (orch runs) and as logged at the end."""
    client = MlflowClient(mlflow_uri)
    run_id = client.create_run(client.create_experiment("best")).info.run_id
    client.log_param(run_id, "checkpoint.metric", "val_top5_error")
    metrics = [
        Metric(key, value, 0, epoch)
        for epoch, pair in enumerate(EPOCHS)
        for key, value in zip(("val_top1_error", "val_top5_error"), pair)
    ]
    client.log_batch(run_id, metrics=metrics)
    rule = BestRule("val_top5_error", "min")
    expected = {"best_epoch": 3.0, "best_val_top1_error": 35.0, "best_val_top5_error": 5.0}
    assert best_metrics(mlflow_uri, run_id, rule) == expected
    live = summary(client.get_run(run_id), mlflow_uri)
    assert (live["best_val_top1_error"], live["best_val_top5_error"]) == (35.0, 5.0)
    assert log_best(mlflow_uri, run_id, BestRule()) == {
        "best_epoch": 1.0,
        "best_val_top1_error": 30.0,
        "best_val_top5_error": 8.0,
    }
