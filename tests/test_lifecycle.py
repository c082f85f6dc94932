"""Retention, `orch resume` and the run lifecycle commands on the real local Ray and MLflow."""

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator import ray_internals
from orchestrator.cli.main import main
from orchestrator.runs.tracking import set_tags, start_run
from orchestrator.spec import load_spec
from orchestrator.targets.local import run_local
from orchestrator.train.checkpoint import list_checkpoints, load_meta, verify

from eval_fixtures import run_orch
from job_fixtures import DEMO, fault, small_job

pytestmark = pytest.mark.slow


def steps(uri, run_id, key="val_top1_error") -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_restarts_and_resume_set_damaged_checkpoints_aside_and_retention_holds(
    ray_cluster, small_fashion, mlflow_uri, tmp_path, capsys, monkeypatch
):
    sets = small_job(small_fashion, tmp_path, workers=1, epochs=3) + [
        "data.max_train_samples=600",
        "checkpoint.num_to_keep=2",
        "training.max_failures=1",
        "training.deterministic=true",  # epoch 1 trained again gives what it gave the first time
    ]
    spec = load_spec(DEMO, sets)
    # In epoch 2 the worker dies after epoch 1's checkpoint was damaged in storage: before Ray
    # hands a checkpoint to the new workers, the controller's keeper (orchestrator/recovery/restart.py)
    # renames it NAME.damaged and drops it from Ray's record; they continue from epoch 0's.
    monkeypatch.setenv("ORCH_TEST_FAULT", fault("kill", epoch=2, step=1, damage=True))
    outcome = run_local(spec, str(DEMO))
    monkeypatch.delenv("ORCH_TEST_FAULT")
    assert "epoch_0001 is damaged" in capsys.readouterr().err  # told with the epoch lines
    run_id, client = outcome.run_id, MlflowClient(mlflow_uri)
    tags = client.get_run(run_id).data.tags
    run_dir = tags["orch.checkpoint_dir"]
    assert tags["orch.restored_from"] == f"{run_dir}/epoch_0000" and tags["orch.restarts"] == "1"
    assert "epoch_0001 is damaged" in tags["orch.restore_warning"] and "continuing from" in tags["orch.restore_warning"]
    assert (Path(run_dir) / "epoch_0001.damaged").is_dir()
    record = json.loads((Path(run_dir) / ray_internals.CHECKPOINT_RECORD).read_text())
    assert sorted(ray_internals.recorded_checkpoints(record)) == [Path(c).name for c in list_checkpoints(run_dir)]

    # num_to_keep=2: the 2 best by val_top1_error, and always the latest.
    errors = {m.step: m.value for m in client.get_metric_history(run_id, "val_top1_error")}
    kept = {load_meta(c)["epoch"] for c in list_checkpoints(run_dir)}
    assert kept == set(sorted(errors, key=lambda e: (errors[e], -e))[:2]) | {2}

    # A truncated model.pt in the latest checkpoint: `orch resume` goes back to the one before
    # it, sets the damaged one aside, trains the lost epoch again and one more; every epoch's
    # metrics stay logged once.
    latest = Path(list_checkpoints(run_dir)[-1])
    assert latest.name == "epoch_0002"
    previous = list_checkpoints(run_dir)[-2]
    with open(latest / "model.pt", "r+b") as f:
        f.truncate(1000)
    code, out, err = run_orch("resume", run_id, "--set", "training.epochs=4", "--output", "json")
    assert code == 0, err[-3000:]
    assert json.loads(out)["run_id"] == run_id and "epoch   4/4" in err  # stdout: one JSON object
    assert "damaged" in err and previous in err
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["orch.resumes"] == "1"
    assert run.data.tags["orch.resumed_from"] == previous
    for key in ("val_top1_error", "train_loss"):
        assert steps(mlflow_uri, run_id, key) == [0, 1, 2, 3], key
    verify(list_checkpoints(run_dir)[-1])
    assert (latest.parent / "epoch_0002.damaged").is_dir()
    assert len(list_checkpoints(run_dir)) <= 3

    # The lifecycle commands read it all back.
    listed = json.loads(cli(capsys, "checkpoints", run_id, "--output", "json"))["checkpoints"]
    assert [c["epoch"] for c in listed] == [load_meta(c)["epoch"] for c in list_checkpoints(run_dir)]
    assert all(
        c["status"] == "ok" and len(c["sha256"]) == 64 and c["size_bytes"] > 0 and "val_top1_error" in c["metrics"]
        for c in listed
    )
    status = json.loads(cli(capsys, "status", spec.name, "--output", "json"))
    assert status["run_id"] == run_id and status["status"] == "FINISHED" and status["epoch"] == 3
    logs = cli(capsys, "logs", run_id).splitlines()
    assert [line.split()[1] for line in logs if line.startswith("epoch")] == ["1/4", "2/4", "3/4", "4/4"]
    assert logs[-2].startswith("restarts: 1 (last: rank 0:")
    assert logs[-1] == f"run {run_id}: FINISHED"
    table = cli(capsys, "runs")
    assert run_id in table and "FINISHED" in table and "4/4" in table


def cli(capsys, *argv) -> str:
    main(list(argv))
    return capsys.readouterr().out


def _error_of(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("orch: error: "), err
    return lines[0]


def test_resume_refuses_bad_input_and_leaves_the_run_alone(small_fashion, mlflow_uri, tmp_path, capsys):
    spec = load_spec(DEMO, small_job(small_fashion, tmp_path, workers=1))
    assert "unknown run" in _error_of(capsys, "resume", "no-such-run")

    run_id = start_run(spec, str(DEMO), mlflow_uri)
    set_tags(mlflow_uri, run_id, {"orch.checkpoint_dir": str(tmp_path / "ckpt" / "x"), "orch.target": "local"})
    MlflowClient(mlflow_uri).set_terminated(run_id, "FAILED")
    assert "no checkpoint" in _error_of(capsys, "resume", run_id)
    assert "model.arch" in _error_of(capsys, "resume", run_id, "--set", "model.arch=cifar_resnet20")
    assert "model.num_classes" in _error_of(capsys, "resume", run_id, "--set", "model.num_classes=20")
    assert MlflowClient(mlflow_uri).get_run(run_id).info.status == "FAILED"
    assert "ambiguous" not in _error_of(capsys, "status", "nope")
