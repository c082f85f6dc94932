"""`orch stop --save` and `orch resume` on the real local Ray, FFCV files and MLflow: a run
stopped mid-epoch continues from its step checkpoint exactly where it stopped.

Elsewhere: a SIGTERM to one of two workers is tests/test_submit.py's exactness test; Ray Train's
restart setting a damaged checkpoint aside is in tests/test_lifecycle.py. Faults come from the
loop's test hook at a chosen step (orchestrator/train/faults.py).
"""

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from eval_fixtures import run_orch
from job_fixtures import DEMO, Notice, as_set_args, fault, orch_process, small_job

pytestmark = pytest.mark.slow


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_stop_save_then_resume_continues_the_step_and_matches_an_uninterrupted_run(
    trained_run, session_store, ray_address, small_fashion, mlflow_uri, tmp_path
):
    """One worker, training.deterministic: the session's trained run (straight through) and the
    same spec stopped with `orch stop --save` in epoch 1, then resumed, log the same train_loss,
    val_top1_error and val_top5_error for every epoch. It also checkpoints every 7 steps (20
    steps an epoch), which changes nothing trained."""
    sets = small_job(small_fashion, tmp_path, workers=1) + ["training.deterministic=true", "checkpoint.every_n_steps=7"]

    notice = Notice(tmp_path)
    proc = orch_process(
        "submit",
        DEMO,
        *as_set_args(sets + ["tracking.run_name=stopped"]),
        cwd=tmp_path,
        uri=mlflow_uri,
        ray_address=ray_address,
        fault=fault("hold", epoch=1, step=4, rank=0, notify=notice.path),  # until the stop request
    )
    assert notice.wait().startswith("hold epoch 1 step 4")
    code, out, err = run_orch("stop", "stopped", "--save", "--output", "json")
    assert code == 0, err
    stopped = json.loads(out)
    _, submit_err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "orch stop --save" in submit_err, submit_err[-3000:]
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
