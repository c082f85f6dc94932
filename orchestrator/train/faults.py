"""A test-only hook that makes a training worker fail, or hold, at a chosen step.

Tests that kill, stop or interrupt a job set $ORCH_TEST_FAULT, a JSON object, before the job
starts, instead of timing a signal against a polling loop:

    {"action": "kill", "epoch": 1, "step": 2, "rank": 1, "notify": "/tmp/x/fifo"}

- action: `mark` (only write the notify line: bench/startup.py times the first step with it),
  `kill` (SIGKILL this worker), `sigterm` (SIGTERM to this worker, as a spot notice delivered
  as a signal sends it, then go on: the loop answers it as a preemption), `interrupt` (SIGINT to
  the job's driver, as Ctrl-C does, then hold) or `hold` (stop making progress until stopped
  from outside, or until `orch stop --save` has reached the workers: then go on, and the loop
  writes its checkpoint at its next notice check) or `await_preemption` (say so, wait until
  Ray's preemption notice has reached this worker, so the loop answers it at this step; from
  the next step on, a rank on the node the notice names makes no progress, as one whose node is
  about to go, and the others train on into the step's collectives, which wait for it);
- epoch, step: when, before that step (counted from 0 within the epoch) is trained;
- rank: which rank acts (default: every rank);
- notify: a path (a FIFO the test reads, or a file) that gets one line just before acting;
- damage: true to truncate the model.pt of the run's newest checkpoint first (a checkpoint
  damaged in storage, which the restart must set aside);
- upload_delay_s: seconds by which rank 0 delays the upload of every step checkpoint (an upload
  made slow on purpose: no rank may move on before it is registered), whatever the action.

The driver reads the variable and hands it to the workers with the loop's configuration, so it
reaches them whichever Ray they run in. It fires only in a worker group that started fresh,
never in one restored from a checkpoint, so a job recovering from the fault goes on. In an epoch
after the first it waits until Ray has recorded the previous epoch's checkpoint, so what the
job restarts from does not depend on how fast Ray's controller took the last report.
"""

import json
import os
import signal
import time

from orchestrator import ray_internals

FAULT_VARIABLE = "ORCH_TEST_FAULT"
ACTIONS = ("kill", "sigterm", "interrupt", "hold", "mark", "await_preemption")


def from_env(run_dir: str, run_id: str) -> dict | None:
    """The fault $ORCH_TEST_FAULT asks for, checked, for run `run_id` whose checkpoints go to
    `run_dir`; or None."""
    text = os.environ.get(FAULT_VARIABLE)
    if not text:
        return None
    try:
        fault = json.loads(text)
        assert isinstance(fault, dict) and fault["action"] in ACTIONS
        fault["epoch"], fault["step"] = int(fault["epoch"]), int(fault["step"])
    except (ValueError, KeyError, TypeError, AssertionError):
        raise ValueError(
            f"${FAULT_VARIABLE}: expected JSON like "
            '{"action": "' + "|".join(ACTIONS) + '", "epoch": 1, "step": 2}, got ' + repr(text)
        ) from None
    fault.update(driver_pid=os.getpid(), run_dir=run_dir, run_id=run_id)
    return fault


def slow_upload(fault: dict | None):
    """The checkpoint_upload_fn for ray.train.report that delays each step checkpoint's upload
    by the fault's upload_delay_s (after Ray's barrier on the checkpoint's name, where a real
    upload takes its time), or None."""
    delay = float((fault or {}).get("upload_delay_s", 0))
    if not delay:
        return None

    def upload(checkpoint, name: str):
        import ray.train

        time.sleep(delay)
        return ray.train.get_context().get_storage().persist_current_checkpoint(checkpoint, name)

    return upload


def step_hook(fault: dict | None, rank: int, steps_per_epoch: int, fresh: bool):
    """A function of the global step that acts when the fault is due on this rank, or None."""
    if not fault or not fresh or fault.get("rank", rank) != rank:
        return None
    due = fault["epoch"] * steps_per_epoch + fault["step"]

    def before_step(step: int) -> None:
        if step == due:
            act(fault, rank)
        elif step == due + 1 and fault["action"] == "await_preemption" and ray_internals.preempted_here():
            _hold_forever()

    return before_step


def act(fault: dict, rank: int) -> None:
    if fault["epoch"] > 0:
        _wait_for_checkpoint(fault["run_dir"], fault["epoch"] - 1)
    if fault.get("damage"):
        _damage_newest(fault["run_dir"])
    if fault.get("notify"):
        with open(fault["notify"], "a") as f:
            f.write(f"{fault['action']} epoch {fault['epoch']} step {fault['step']} rank {rank} pid {os.getpid()}\n")
    if fault["action"] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault["action"] == "mark":
        return
    if fault["action"] == "sigterm":
        _sigterm_self()
        return
    if fault["action"] == "await_preemption":
        while not ray_internals.preemption_announced():
            time.sleep(0.2)
        return
    if fault["action"] == "interrupt":
        os.kill(fault["driver_pid"], signal.SIGINT)
    _hold(fault["run_id"])


def _hold(run_id: str) -> None:
    """Make no progress until the job is stopped from outside, or until `orch stop --save` has
    reached the workers (then go on: the loop writes its checkpoint at its next check)."""
    from orchestrator.train.notices import stop_key

    while not ray_internals.kv_get(stop_key(run_id)):
        time.sleep(0.2)


def _hold_forever() -> None:
    while True:
        time.sleep(1)


def _sigterm_self(timeout_s: float = 10) -> None:
    """SIGTERM to this process, returning once its handler (on the main thread) has taken it,
    so the notice is seen at the next check."""
    from orchestrator.train.notices import signalled

    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while not signalled() and time.monotonic() < deadline:
        time.sleep(0.01)


def _damage_newest(run_dir: str) -> None:
    from orchestrator.train.checkpoint import MODEL_FILE, list_checkpoints

    newest = list_checkpoints(run_dir)[-1]
    with open(os.path.join(newest, MODEL_FILE), "r+b") as f:
        f.truncate(1000)


def _wait_for_checkpoint(run_dir: str, epoch: int, timeout_s: float = 300) -> None:
    """Until Ray's checkpoint record in `run_dir` lists epoch's checkpoint (local storage only)."""
    from orchestrator.train.checkpoint import checkpoint_name

    path, name = os.path.join(run_dir, ray_internals.CHECKPOINT_RECORD), checkpoint_name(epoch)
    deadline = time.monotonic() + timeout_s
    while "://" not in run_dir and time.monotonic() < deadline:
        try:
            with open(path) as f:
                if name in ray_internals.recorded_checkpoints(json.load(f)):
                    return
        except (OSError, ValueError):
            pass  # not written yet, or being replaced
        time.sleep(0.2)
