"""`orch submit` end to end on the real parts: local Ray, FFCV files of Fashion-MNIST, MLflow.

Training uses a 2,000-image subset so an epoch takes seconds; validation always covers the
whole 10,000-image test set, each sample once across ranks.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from orchestrator.models import build_model
from orchestrator.spec import load_spec
from orchestrator.targets.local import run_local
from orchestrator.train.checkpoint import load_meta, load_model_state

from job_fixtures import DEMO, raw_fashion_mnist_test, small_job, train_workers

METRICS = ("train_loss", "lr", "train_images_per_second", "epoch_seconds",
           "val_loss", "val_top1_error", "val_top5_error", "val_samples")

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
            logits = model((x[i:i + 1000] - mean) / std)
            correct += int((logits.argmax(1) == y[i:i + 1000]).sum())
    return 100.0 * (1 - correct / len(y))


def test_two_workers_log_exact_metrics_once_per_epoch(ray_cluster, fashion_mnist, mlflow_uri, tmp_path):
    spec = load_spec(DEMO, small_job(fashion_mnist, tmp_path, workers=2))
    outcome = run_local(spec, str(DEMO))

    assert outcome["status"] == "FINISHED"
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name(spec.experiment).experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_id == outcome["run_id"]
    for key in METRICS:
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1], key
    assert all(m.value == 10000 for m in client.get_metric_history(run.info.run_id, "val_samples"))
    assert run.data.params["model.arch"] == "cifar_resnet8"
    assert run.data.params["scaling.num_workers"] == "2"
    assert [w["rank"] for w in json.loads(run.data.tags["workers"])] == [0, 1]  # where each rank ran
    assert "version.ray" in run.data.tags and "version.ffcv" in run.data.tags
    assert run.data.metrics["best_val_top1_error"] == min(
        m.value for m in client.get_metric_history(run.info.run_id, "val_top1_error"))

    best = Path(outcome["best_checkpoint"])
    meta = load_meta(best)
    assert meta["preprocess"]["size"] == 28 and len(meta["preprocess"]["mean"]) == 3
    assert set(("arch", "num_classes", "epoch", "metrics", "spec", "preprocess")) <= set(meta)
    state = torch.load(best / "train_state.pt", weights_only=True)
    assert state["epoch"] == meta["epoch"] and "optimizer" in state
    assert independent_top1_error(best) == pytest.approx(meta["metrics"]["val_top1_error"], abs=0.1)


def test_cli_one_worker_prints_one_json_object(ray_cluster, fashion_mnist, mlflow_uri, tmp_path):
    sets = [arg for s in small_job(fashion_mnist, tmp_path, workers=1, epochs=1) for arg in ("--set", s)]
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", "submit", str(DEMO), *sets, "--output", "json"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcome = json.loads(proc.stdout)
    assert set(outcome) == {"run_id", "status", "metrics", "best_checkpoint"}
    assert outcome["status"] == "FINISHED" and outcome["metrics"]["val_samples"] == 10000
    assert "epoch   1/1" in proc.stderr
    assert MlflowClient(mlflow_uri).get_run(outcome["run_id"]).info.status == "FINISHED"


def _start_cli_job(args, cwd):
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli.main", "submit", str(DEMO), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
    )


def _wait_for_first_epoch(proc) -> None:
    for line in proc.stdout:
        if line.startswith("epoch   1/"):
            return
    raise AssertionError(f"no epoch finished: {proc.stderr.read()[-3000:]}")


def _only_run(uri):
    client = MlflowClient(uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1
    return runs[0]


def test_ctrl_c_marks_the_run_killed(ray_cluster, fashion_mnist, mlflow_uri, tmp_path):
    sets = [arg for s in small_job(fashion_mnist, tmp_path, workers=1, epochs=30) for arg in ("--set", s)]
    proc = _start_cli_job(sets, tmp_path)
    _wait_for_first_epoch(proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "marked KILLED" in err and "Traceback" not in err
    run = _only_run(mlflow_uri)
    assert run.info.status == "KILLED"
    assert Path(run.data.tags["orch.checkpoint_dir"], "epoch_0000", "model.pt").exists()


def test_a_dead_worker_fails_the_run_with_its_cause(ray_cluster, fashion_mnist, mlflow_uri, tmp_path):
    sets = [arg for s in small_job(fashion_mnist, tmp_path, workers=1, epochs=30) for arg in ("--set", s)]
    proc = _start_cli_job(sets + ["--set", "training.max_failures=0"], tmp_path)
    _wait_for_first_epoch(proc)
    workers = train_workers(os.getpid())
    assert workers
    for worker in workers:
        worker.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("orch: error: run")]
    assert len(lines) == 1 and "FAILED" in lines[0], err[-3000:]
    run = _only_run(mlflow_uri)
    assert run.info.status == "FAILED" and run.data.tags.get("orch.error")
