"""Checkpoint files, checksums, fallback past damaged checkpoints, and the restart record:
unit tests on real files and a real sqlite MLflow store, no Ray job."""

import json
import os
import subprocess
import sys

import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient

from orchestrator.errors import OrchError
from orchestrator.recovery.restart import restart_point
from orchestrator.runs import lifecycle, run_lookup
from orchestrator.train import interruptions
from orchestrator.train.checkpoint import (
    CHECKSUMS_FILE,
    DamagedCheckpoint,
    checkpoint_name,
    describe,
    latest_good,
    list_checkpoints,
    position_of,
    save_checkpoint,
    verify,
)
from orchestrator.train.epoch_logger import EpochLogger


def write_run_dir(root, errors=(30.0, 20.0, 25.0)):
    for epoch, err in enumerate(errors):
        save_checkpoint(
            root / f"epoch_{epoch:04d}",
            {"w": torch.full((4,), float(epoch))},
            {"epoch": epoch, "optimizer": {}},
            {"epoch": epoch, "metrics": {"val_top1_error": err}},
        )
    return root


def test_checksums_cover_every_file_and_verify(tmp_path):
    ckpt = write_run_dir(tmp_path)
    listed = json.loads((ckpt / "epoch_0000" / CHECKSUMS_FILE).read_text())["files"]
    assert set(listed) == {"model.pt", "train_state.pt", "meta.json"}
    assert verify(str(ckpt / "epoch_0000")) == listed
    assert not list((ckpt / "epoch_0000").glob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "missing_checksums", "missing_file"])
def test_damaged_latest_falls_back_to_the_previous_good_one(tmp_path, damage):
    root = write_run_dir(tmp_path)
    latest = root / "epoch_0002"
    if damage == "truncate":
        with open(latest / "model.pt", "r+b") as f:
            f.truncate(100)
    elif damage == "missing_checksums":
        (latest / CHECKSUMS_FILE).unlink()
    else:
        (latest / "train_state.pt").unlink()
    with pytest.raises(DamagedCheckpoint):
        verify(str(latest))
    good, damaged = latest_good(str(root))
    assert good == str(root / "epoch_0001") and [d for d, _ in damaged] == [str(latest)]
    assert describe(str(latest))["status"] == "damaged"
    point = restart_point(str(root), newest=str(latest))  # as the controller's keeper calls it
    assert point.location == str(root / "epoch_0001") and point.damaged[0][0] == str(latest)
    assert "damaged" in point.warning and "continuing from" in point.warning
    assert (root / "epoch_0002.damaged").is_dir() and not latest.exists()


def test_no_good_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    root = write_run_dir(tmp_path, errors=(30.0,))
    (root / "epoch_0000" / CHECKSUMS_FILE).unlink()
    point = restart_point(str(root))
    assert point.location is None and "no earlier checkpoint verifies" in point.warning
    assert (root / "epoch_0000").is_dir()  # nothing is moved when nothing verifies
    with pytest.raises(DamagedCheckpoint):
        verify(str(root / "epoch_0000"))  # what a worker handed it raises: the attempt fails


def test_step_checkpoints_sort_within_their_epoch_and_restart_from_the_newest(tmp_path):
    root = write_run_dir(tmp_path, errors=(30.0, 20.0))
    save_checkpoint(root / checkpoint_name(2, 5), {"w": torch.zeros(4)}, {"epoch": 2}, {"epoch": 2, "metrics": {}})
    save_checkpoint(root / checkpoint_name(1, 3), {"w": torch.zeros(4)}, {"epoch": 1}, {"epoch": 1, "metrics": {}})
    names = [c.rsplit("/", 1)[-1] for c in list_checkpoints(str(root))]
    assert names == ["epoch_0000", "epoch_0001_step_000003", "epoch_0001", "epoch_0002_step_000005"]
    assert [c.rsplit("/", 1)[-1] for c in list_checkpoints(str(root), steps=False)] == ["epoch_0000", "epoch_0001"]
    assert position_of(str(root / "epoch_0002_step_000005")) == (2, 5)
    assert restart_point(str(root)).location == str(root / "epoch_0002_step_000005")
    # Bounded by what Ray hands over: nothing newer than it is considered.
    assert restart_point(str(root), newest=str(root / "epoch_0001")).location == str(root / "epoch_0001")
    assert describe(str(root / "epoch_0001_step_000003"))["step"] == 3


def test_describe_lists_path_epoch_metrics_size_checksum(tmp_path):
    root = write_run_dir(tmp_path)
    rows = [describe(c) for c in list_checkpoints(str(root))]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[1]["metrics"] == {"val_top1_error": 20.0}
    assert all(r["status"] == "ok" and len(r["sha256"]) == 64 and r["size_bytes"] > 0 for r in rows)


def test_damaged_checkpoints_leave_rays_snapshot(tmp_path):
    root = write_run_dir(tmp_path)
    result = lambda e: {"checkpoint_dir_name": f"epoch_{e:04d}", "metrics": {"epoch": e}}  # noqa: E731
    snapshot = {
        "checkpoint_results": [result(1), result(2), result(0)],
        "checkpoint_report_indices": [1, 2, 0],
        "latest_checkpoint_result": result(2),
        "pending_training_results": [],
        "pending_validation_specs": [],
        "current_report_index": 3,
    }
    (root / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    (root / "epoch_0002" / CHECKSUMS_FILE).unlink()
    assert restart_point(str(root)).location == str(root / "epoch_0001")
    after = json.loads((root / "checkpoint_manager_snapshot.json").read_text())
    assert [r["checkpoint_dir_name"] for r in after["checkpoint_results"]] == ["epoch_0001", "epoch_0000"]
    assert after["checkpoint_report_indices"] == [1, 0]
    assert after["latest_checkpoint_result"]["checkpoint_dir_name"] == "epoch_0001"
    assert (root / "epoch_0002.damaged").is_dir() and not (root / "epoch_0002").exists()
    assert [c.rsplit("/", 1)[-1] for c in list_checkpoints(str(root))] == ["epoch_0000", "epoch_0001"]


class _Ctx:
    run_id = "ray-run"


def _fake_run(uri, tmp_path, **tags):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("orch-test") or client.get_experiment(
        client.create_experiment("orch-test")
    )
    run = client.create_run(
        experiment.experiment_id,
        run_name="fake",
        tags={"orch.checkpoint_dir": str(tmp_path / "none"), "orch.target": "local", **tags},
    )
    return client, run.info.run_id


def test_preemptions_and_failures_are_recorded_apart(mlflow_uri, tmp_path):
    """The controller's states as Ray Train 2.60 goes through them (its own classes), fed by hand."""
    from ray.exceptions import RayActorError
    from ray.train import PreemptionError, PreemptionInfo, WorkerGroupError
    from ray.train.v2._internal.execution.controller import state

    client, run_id = _fake_run(mlflow_uri, tmp_path)
    recorder = interruptions.recorder(mlflow_uri, run_id)
    info = PreemptionInfo(deadline_ms=1_900_000_000_000, preempted_node_to_ranks={"node-a": [1]})
    recorder.after_controller_state_update(state.RunningState(), state.PreemptingState(info, detected_at_s=0.0))
    error = PreemptionError(info, drain_timed_out=True)
    recorder.after_controller_state_update(state.PreemptingState(info, 0.0), state.RestartingState(error))
    interruptions.note_continuation(mlflow_uri, run_id, recorder.continuing, "/ckpt/epoch_0001_step_000003")
    tags = client.get_run(run_id).data.tags
    assert tags["orch.preemptions"] == "1" and tags["orch.restarts"] == "1" and "orch.failures" not in tags
    assert tags["orch.last_restart_cause"].startswith("preemption 1 of nodes node-a")
    (entry,) = json.loads(tags["orch.preemption_log"])
    assert entry["nodes"] == ["node-a"] and entry["ranks"] == [1] and entry["deadline_ms"] == 1_900_000_000_000
    assert entry["noticed"] and entry["restarted"] and entry["continued_from"] == "/ckpt/epoch_0001_step_000003"
    (line,) = interruptions.preemption_lines(json.loads(tags["orch.preemption_log"]))
    assert "preemption 1: noticed" in line and "continued from /ckpt/epoch_0001_step_000003" in line

    # A worker that raised is a failure, within training.max_failures; one that died with its
    # preempted node (no notice seen first) is a preemption; a failure Ray gives up on is counted
    # but not restarted.
    failed = WorkerGroupError("x", {1: RuntimeError("A worker health check failed.\nWorker info: rank 1")})
    recorder.after_controller_state_update(state.RunningState(), state.RestartingState(failed))
    lost = WorkerGroupError("y", {0: RayActorError(preempted=True)})
    recorder.after_controller_state_update(state.RunningState(), state.RestartingState(lost))
    recorder.after_controller_state_update(state.RunningState(), state.ErroredState(failed))
    tags = client.get_run(run_id).data.tags
    assert (tags["orch.failures"], tags["orch.preemptions"], tags["orch.restarts"]) == ("2", "2", "3")
    assert tags["orch.last_failure"].startswith("rank 1: A worker health check failed.")
    assert [m.value for m in client.get_metric_history(run_id, "restarts")] == [1, 2, 3]


def test_an_epoch_reported_again_is_logged_once(mlflow_uri, tmp_path):
    client, run_id = _fake_run(mlflow_uri, tmp_path)
    logger = EpochLogger(mlflow_uri, run_id)
    for epoch in (0, 1, 1, 2):
        logger.after_report(_Ctx(), [{"epoch": epoch, "val_top1_error": 10.0 + epoch}], None)
    assert [m.step for m in client.get_metric_history(run_id, "val_top1_error")] == [0, 1, 2]


def test_run_lookup_by_id_or_unique_name(mlflow_uri, tmp_path):
    client, first = _fake_run(mlflow_uri, tmp_path)
    assert run_lookup.find_run(mlflow_uri, first).info.run_id == first
    run = client.get_run(first)
    assert run_lookup.find_run(mlflow_uri, run.info.run_name).info.run_id == first
    second = client.create_run(run.info.experiment_id, run_name=run.info.run_name).info.run_id
    with pytest.raises(OrchError, match=f"ambiguous.*({first}|{second})"):
        run_lookup.find_run(mlflow_uri, run.info.run_name)
    with pytest.raises(OrchError, match="unknown run"):
        run_lookup.find_run(mlflow_uri, "nope")


def test_stop_signals_the_driver_and_waits_for_it(mlflow_uri, tmp_path):
    """A stand-in driver that ends its run KILLED on SIGINT, as `orch submit` does."""
    _, run_id = _fake_run(mlflow_uri, tmp_path)
    driver = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"""
import signal, sys
from mlflow.tracking import MlflowClient
def stop(*_):
    MlflowClient({mlflow_uri!r}).set_terminated({run_id!r}, status="KILLED"); sys.exit(130)
signal.signal(signal.SIGINT, stop)
print("ready", flush=True)  # the handler is in place: the signal can come
signal.pause()
""",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert driver.stdout.readline().strip() == "ready"
    MlflowClient(mlflow_uri).set_tag(run_id, "orch.driver_pid", str(driver.pid))
    outcome = lifecycle.stop(mlflow_uri, run_id, wait_s=30)
    assert driver.wait(timeout=30) == 130
    assert outcome["status"] == "KILLED" and "SIGINT" in outcome["how"]


@pytest.mark.parametrize("save", [False, True])
def test_stop_marks_a_run_whose_driver_is_gone_killed(mlflow_uri, tmp_path, save):
    """No driver, no workers to write a checkpoint: --save does not wait for one."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    client, run_id = _fake_run(mlflow_uri, tmp_path, **{"orch.driver_pid": str(gone.pid)})
    outcome = lifecycle.stop(mlflow_uri, run_id, wait_s=60, save=save)
    assert outcome["status"] == "KILLED" and client.get_run(run_id).info.status == "KILLED"
    assert "driver was gone" in outcome["how"] and "orch.stop_request" not in client.get_run(run_id).data.tags
    with pytest.raises(OrchError, match="not running"):
        lifecycle.stop(mlflow_uri, run_id)


@pytest.mark.parametrize("save", [False, True])
def test_stop_ends_a_sweep_whose_driver_is_gone_and_its_running_trials(mlflow_uri, tmp_path, save):
    """A sweep's driver killed mid-trial (nothing ended its runs): `orch stop PARENT` marks the
    parent and every child still RUNNING KILLED; with --save too, there being no workers left."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    client, parent_id = _fake_run(mlflow_uri, tmp_path, **{"orch.driver_pid": str(gone.pid), "orch.kind": "sweep"})
    experiment = client.get_run(parent_id).info.experiment_id
    children = [
        client.create_run(experiment, tags={"mlflow.parentRunId": parent_id, "orch.sweep.trial": str(i)}).info.run_id
        for i in range(2)
    ]
    client.set_terminated(children[0], status="FINISHED")
    outcome = lifecycle.stop(mlflow_uri, parent_id, wait_s=60, save=save)
    assert outcome["status"] == "KILLED" and outcome["trials_killed"] == [children[1]]
    assert [client.get_run(r).info.status for r in children] == ["FINISHED", "KILLED"]


def test_a_reused_pid_is_not_taken_for_the_driver(mlflow_uri, tmp_path):
    """A stale RUNNING run whose pid now belongs to another process: never signal that process."""
    client, run_id = _fake_run(
        mlflow_uri, tmp_path, **{"orch.driver_pid": str(os.getpid()), "orch.driver_started": "12345.00"}
    )
    assert lifecycle.driver_alive(client.get_run(run_id)) is False
    client.set_tag(run_id, "orch.driver_started", f"{psutil.Process().create_time():.2f}")
    assert lifecycle.driver_alive(client.get_run(run_id)) is True


def test_checkpoints_on_a_uri_storage_are_listed_and_verified(tmp_path):
    """Storage given as a URI (here file://, as s3:// would be) goes through pyarrow's filesystems."""
    root = write_run_dir(tmp_path)
    with open(root / "epoch_0002" / "model.pt", "r+b") as f:
        f.truncate(10)
    uri = f"file://{root}"
    assert list_checkpoints(uri) == [f"{uri}/epoch_{e:04d}" for e in range(3)]
    assert latest_good(uri)[0] == f"{uri}/epoch_0001"
    assert describe(f"{uri}/epoch_0001")["status"] == "ok"
