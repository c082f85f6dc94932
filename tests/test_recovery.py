"""`orch stop --save` and `orch resume` on the real local Ray, FFCV files and MLflow: a run
stopped mid-epoch continues from its step checkpoint exactly where it stopped.

Elsewhere: a SIGTERM to one of two workers is tests/test_submit.py's exactness test; a node
drained for preemption is tests/test_remote.py's; Ray Train's restart setting a damaged checkpoint
aside is in tests/test_lifecycle.py. Faults come from the
loop's test hook at a chosen step (orchestrator/train/faults.py).
"""

import json
import signal
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.errors import JobInterrupted
from orchestrator.spec import load_spec
from orchestrator.targets.local import run_local

from eval_fixtures import run_orch
from job_fixtures import DEMO, Notice, fault, small_job

pytestmark = pytest.mark.slow


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def _outcome_of(spec):
    """run_local(spec)'s outcome, or the error it raised."""
    try:
        return run_local(spec, str(DEMO))
    except Exception as exc:
        return exc


def _wait_for_stdout(capsys, text: str, timeout_s: float = 60) -> None:
    seen, deadline = "", time.monotonic() + timeout_s
    while text not in seen and time.monotonic() < deadline:
        time.sleep(0.2)
        seen += capsys.readouterr().out
    assert text in seen, seen


def test_stop_save_then_resume_continues_the_step_and_matches_an_uninterrupted_run(
    trained_run, session_store, ray_cluster, small_fashion, mlflow_uri, tmp_path, monkeypatch, capsys
):
    """One worker: the session's trained run (straight through) and the same spec stopped with
    `orch stop --save` in epoch 1, then resumed, log the same train_loss,
    val_top1_error and val_top5_error for every epoch. It also checkpoints every 7 steps (20
    steps an epoch), which changes nothing trained, and checks for notices every 4 steps (the stop
    reaches the workers through its driver at the next check: epoch 1's step 4), and turns on
    training.deterministic, which on CPUs changes no number either."""
    sets = small_job(small_fashion, tmp_path, workers=1) + [
        "training.deterministic=true",
        "checkpoint.every_n_steps=7",
        "training.notice_every_n_steps=4",
    ]

    # The stopped run's driver is a thread of this process, on the session's Ray (no `orch`
    # process to start and join it).
    notice = Notice(tmp_path)
    monkeypatch.setenv("ORCH_TEST_FAULT", fault("hold", epoch=1, step=4, rank=0, notify=notice.path))
    spec = load_spec(DEMO, sets + ["tracking.run_name=stopped"])
    ended = []
    driver = threading.Thread(target=lambda: ended.append(_outcome_of(spec)), daemon=True)
    driver.start()
    assert notice.wait().startswith("hold epoch 1 step 4")  # it holds until the stop request
    monkeypatch.delenv("ORCH_TEST_FAULT")
    # Its one stdout line, epoch 0's, printed before `orch stop` prints its JSON there.
    _wait_for_stdout(capsys, "epoch   1/2")
    # Were the workers not to save in time, `orch stop` would SIGINT the driver: this process.
    interrupted = []
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    try:
        code, out, err = run_orch("stop", "stopped", "--save", "--output", "json")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 0 and not interrupted, err
    stopped = json.loads(out)
    driver.join(120)
    # What `orch submit` would exit with: 130, saying how to continue.
    (error,) = ended
    assert isinstance(error, JobInterrupted) and error.exit_code == 130, error
    assert "orch stop --save" in str(error), error
    run_id = stopped["run_id"]
    run = MlflowClient(mlflow_uri).get_run(run_id)
    assert run.info.status == "KILLED" == stopped["status"]
    step_checkpoint = Path(run.data.tags["orch.checkpoint_dir"]) / "epoch_0001_step_000004"
    assert stopped["checkpoint"] == str(step_checkpoint) and step_checkpoint.is_dir()
    assert [e for e, _ in history(mlflow_uri, run_id, "val_top1_error")] == [0]  # epoch 1 was cut short

    code, _, err = run_orch("resume", run_id, "--output", "json")
    assert code == 0, err[-3000:]
    run = MlflowClient(mlflow_uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["orch.resumed_from"] == str(step_checkpoint)
    assert run.data.tags["orch.step_checkpoint"].endswith("epoch_0001_step_000015")  # global step 35
    for key in ("train_loss", "train_top1_error", "val_top1_error", "val_top5_error"):
        assert history(mlflow_uri, run_id, key) == history(session_store, trained_run["run_id"], key), key
    # Curves inside epochs (rank 0, every 5 steps of 20 an epoch): the stopped and resumed run
    # logged each of those global steps once, as the straight one did, with the same losses.
    straight_steps = history(session_store, trained_run["run_id"], "step/train_loss")
    assert [step for step, _ in straight_steps] == list(range(0, 40, 5))
    assert history(mlflow_uri, run_id, "step/train_loss") == straight_steps
    assert MlflowClient(mlflow_uri).get_run(run_id).data.tags["orch.steps_per_epoch"] == "20"
