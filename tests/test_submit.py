"""`orch submit` end to end on the real parts: local Ray, FFCV files of Fashion-MNIST, MLflow.

The exactness test validates on the whole 10,000-image test set, each sample once across
ranks, and has a worker preempted (SIGTERM) mid-epoch with the job's defaults (no failure
allowed): the SIGTERM becomes a preemption notice, the ranks write a step checkpoint (its upload
made slow on purpose: no rank moves on before Ray has it), Ray Train restarts the worker group
from it, charged to its preemption budget, and the run records every epoch exactly once, one
preemption and no failure, with the metrics of an uninterrupted run. Failures come from the
training loop's fault hook at a chosen step (orchestrator/train/faults.py), never from a signal
timed against the progress output.
"""

import json
import signal
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from orchestrator.models import build_model
from orchestrator.spec import load_spec
from orchestrator.targets.local import run_local
from orchestrator.train.checkpoint import load_meta, load_model_state

from eval_fixtures import run_orch
from job_fixtures import (
    DEMO,
    Notice,
    as_set_args,
    fault,
    orch_process,
    raw_fashion_mnist_test,
    small_job,
)

METRICS = (
    "train_loss",
    "lr",
    "train_images_per_second",
    "epoch_seconds",
    "val_loss",
    "val_top1_error",
    "val_top5_error",
    "val_samples",
)

pytestmark = pytest.mark.slow


def independent_top1_error(checkpoint: Path) -> float:
    meta = load_meta(checkpoint)
    model = build_model(meta["arch"], meta["num_classes"], **meta["spec"]["model"]["options"])
    model.load_state_dict(load_model_state(checkpoint))
    model.eval()
    x, y = raw_fashion_mnist_test()
    mean = torch.tensor(meta["preprocess"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(meta["preprocess"]["std"]).view(1, 3, 1, 1)
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), 1000):
            logits = model((x[i : i + 1000] - mean) / std)
            correct += int((logits.argmax(1) == y[i : i + 1000]).sum())
    return 100.0 * (1 - correct / len(y))


def only_run(uri):
    client = MlflowClient(uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1
    return runs[0]


def test_two_workers_survive_a_preempted_worker_and_log_exact_metrics_once(
    ray_cluster, fashion_mnist, mlflow_uri, tmp_path, monkeypatch, capsys
):
    sets = small_job(fashion_mnist, tmp_path, workers=2) + [
        "data.max_train_samples=800",  # 4 steps an epoch: the preemption's step 3 is within epoch 1
        "checkpoint.num_to_keep=3",
        "training.notice_every_n_steps=1",  # the notice is answered at the very step
        "training.deterministic=true",  # so that the uninterrupted run trains the same
    ]
    straight = run_local(load_spec(DEMO, sets + ["tracking.run_name=straight"]), str(DEMO))
    # The SIGTERM to rank 1 before step 3 of epoch 1, while rank 0 takes 3 s to upload each step
    # checkpoint: had rank 1 let Ray restart before the upload was registered, the run would
    # continue from epoch 0's checkpoint.
    monkeypatch.setenv("ORCH_TEST_FAULT", fault("sigterm", epoch=1, step=3, rank=1, upload_delay_s=3))
    outcome = run_local(load_spec(DEMO, sets + ["tracking.run_name=preempted"]), str(DEMO))
    assert outcome.status == "FINISHED"
    client = MlflowClient(mlflow_uri)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    for key in METRICS:
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1], key
    assert all(m.value == 10000 for m in client.get_metric_history(run.info.run_id, "val_samples"))
    for key in ("train_loss", "train_top1_error", "val_loss", "val_top1_error", "val_top5_error", "lr"):
        history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        assert history == [(m.step, m.value) for m in client.get_metric_history(straight.run_id, key)], key
    assert run.data.params["model.arch"] == "cifar_resnet8"
    assert run.data.params["scaling.num_workers"] == "2"
    assert [w["rank"] for w in json.loads(run.data.tags["workers"])] == [0, 1]  # where each rank ran
    assert "version.ray" in run.data.tags and "version.ffcv" in run.data.tags
    assert run.data.metrics["best_val_top1_error"] == min(
        m.value for m in client.get_metric_history(run.info.run_id, "val_top1_error")
    )

    # Both ranks wrote a step checkpoint before step 3 of epoch 1; one preemption, no failure,
    # continued from it, skipping the trained batches.
    tags = run.data.tags
    assert tags["orch.preemptions"] == "1" and "orch.failures" not in tags
    assert tags["orch.restarts"] == "1" and tags["orch.last_restart_cause"].startswith("preemption 1")
    step_checkpoint = Path(tags["orch.checkpoint_dir"]) / "epoch_0001_step_000003"
    assert tags["orch.step_checkpoint"] == tags["orch.restored_from"] == str(step_checkpoint)
    (preemption,) = json.loads(tags["orch.preemption_log"])
    assert preemption["ranks"] == [1] and preemption["continued_from"] == str(step_checkpoint)
    assert "preemption 1: noticed" in tags["mlflow.note.content"]  # the run's description says so
    state = torch.load(step_checkpoint / "train_state.pt", weights_only=True)
    assert state["epoch"] == 1 and state["progress"]["batches"] == 3 and state["progress"]["samples"] == 600
    assert state["step"] == 4 + 3  # 800 images in batches of 100 over 2 ranks: 4 steps an epoch
    meta = load_meta(step_checkpoint)
    assert "val_top1_error" not in meta["metrics"]  # never ranked as an epoch
    assert meta["layout"] == {"world_size": 2, "batch_size": 100, "seed": 0}
    err = capsys.readouterr().err
    assert "preempted (preemption 1" in err and "continuing from the latest checkpoint" in err, err[-3000:]
    code, out, _ = run_orch("status", run.info.run_id)
    assert code == 0 and f"continued from {step_checkpoint}" in out, out

    best = Path(outcome.best_checkpoint)
    meta = load_meta(best)
    assert meta["preprocess"]["size"] == 28 and len(meta["preprocess"]["mean"]) == 3
    assert {"arch", "num_classes", "epoch", "metrics", "spec", "preprocess"} <= set(meta)
    state = torch.load(best / "train_state.pt", weights_only=True)
    assert state["epoch"] == meta["epoch"] and "optimizer" in state
    assert independent_top1_error(best) == pytest.approx(meta["metrics"]["val_top1_error"], abs=0.1)


def test_ctrl_c_marks_the_run_killed(ray_address, small_fashion, mlflow_uri, tmp_path):
    """Ctrl-C (SIGINT to the driver) while epoch 1 trains: the hook sends it, then holds."""
    notice = Notice(tmp_path)
    # 3 steps an epoch: epoch 0 (whose checkpoint the interrupted run keeps) trains in seconds.
    sets = as_set_args(small_job(small_fashion, tmp_path, workers=1, epochs=30) + ["data.max_train_samples=300"])
    proc = orch_process(
        "submit",
        DEMO,
        *sets,
        cwd=tmp_path,
        uri=mlflow_uri,
        ray_address=ray_address,
        fault=fault("interrupt", epoch=1, step=2, notify=notice.path),
    )
    assert notice.wait().startswith("interrupt epoch 1 step 2")
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    assert "marked KILLED" in err and "Traceback" not in err
    assert err.startswith("orch: checking job demo-fashion-mnist") and "orch: starting 1 worker" in err, err[:3000]
    run = only_run(mlflow_uri)
    assert run.info.status == "KILLED"
    assert Path(run.data.tags["orch.checkpoint_dir"], "epoch_0000", "model.pt").exists()


def test_a_dead_worker_fails_the_run_with_its_cause(ray_cluster, small_fashion, mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("ORCH_TEST_FAULT", fault("kill", epoch=0, step=2))
    sets = as_set_args(small_job(small_fashion, tmp_path, workers=1, epochs=30) + ["training.max_failures=0"])
    code, _, err = run_orch("submit", DEMO, *sets)
    assert code == 1, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("orch: error: run")]
    assert len(lines) == 1 and "FAILED" in lines[0], err[-3000:]
    run = only_run(mlflow_uri)
    assert run.info.status == "FAILED" and run.data.tags.get("orch.error")
