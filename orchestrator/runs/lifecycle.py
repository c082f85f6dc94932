"""The run lifecycle: what `orch runs`/`status`/`logs`/`stop`/`checkpoints` read and change. Only
the CLI imports this module: it reaches every target and the sweeps.

A run's checkpoint folder is its orch.checkpoint_dir tag; a local run's driver (the `orch submit`
or `orch resume` process) is the one its driver tags name (orchestrator/runs/driver.py);
a remote run's job is reached through the target its orch.target tag names (targets.ray_cluster
for a Ray job, targets.kuberay for a RayJob).
"""

import json
import os
import signal
import time

from mlflow.tracking import MlflowClient

from orchestrator.errors import OrchError, last_line
from orchestrator.recovery.best import BestRule
from orchestrator.runs.driver import ACTIVE, driver_alive
from orchestrator.runs.outcome import planned_epochs
from orchestrator.runs.run_lookup import find_run
from orchestrator.runs.tracking import best_metrics
from orchestrator.tags import (
    CHECKPOINT_DIR_TAG,
    DRIVER_HOST_TAG,
    DRIVER_PID_TAG,
    EPOCH_TAG,
    ERROR_TAG,
    FAILURES_TAG,
    KIND_TAG,
    LAST_RESTART_CAUSE_TAG,
    LATEST_CHECKPOINT_TAG,
    PREEMPTION_LOG_TAG,
    PREEMPTIONS_TAG,
    RAY_ADDRESS_TAG,
    RAY_JOB_ID_TAG,
    RESTARTS_TAG,
    STEP_CHECKPOINT_TAG,
    STOP_TAG,
    SWEEP,
    SWEEP_TRIALS_TAG,
    TARGET_TAG,
    WORKERS_TAG,
    is_sweep,
    is_trial,
)
from orchestrator.train.checkpoint import describe, list_checkpoints


def summary(run, uri: str) -> dict:
    """One run as `orch runs` and `orch status` show it."""
    tags = run.data.tags
    return {
        "run_id": run.info.run_id,
        "name": run.info.run_name,
        "experiment_id": run.info.experiment_id,
        "status": run.info.status,
        "epoch": int(tags[EPOCH_TAG]) if EPOCH_TAG in tags else None,
        "epochs": planned_epochs(run),
        **_best(uri, run),
        "target": tags.get(TARGET_TAG),
        "where": _where(tags),
        "ray_job_id": tags.get(RAY_JOB_ID_TAG),
        "workers": json.loads(tags[WORKERS_TAG]) if WORKERS_TAG in tags else None,
        "restarts": int(tags.get(RESTARTS_TAG, 0)),
        "last_restart_cause": tags.get(LAST_RESTART_CAUSE_TAG),
        "preemptions": int(tags.get(PREEMPTIONS_TAG, 0)),
        "failures": int(tags.get(FAILURES_TAG, 0)),
        "preemption_log": json.loads(tags.get(PREEMPTION_LOG_TAG, "[]")),
        "checkpoint_dir": tags.get(CHECKPOINT_DIR_TAG),
        "latest_checkpoint": tags.get(LATEST_CHECKPOINT_TAG),
        "error": tags.get(ERROR_TAG),
    }


def checkpoints(run) -> list[dict]:
    """Each kept checkpoint of the run, oldest first: path, epoch, metrics, size, checksum, status."""
    root = run.data.tags.get(CHECKPOINT_DIR_TAG)
    if not root:
        raise OrchError(f"run {run.info.run_id} has no orch.checkpoint_dir tag: not started by orch")
    return [describe(location) for location in list_checkpoints(root)]


def stop(uri: str, ref: str, wait_s: float = 120.0, save: bool = False) -> dict:
    """End a run's job and mark the run KILLED if its driver does not; checkpoints are kept.

    A sweep's parent (orch.kind=sweep) is stopped through its driver, which stops every trial;
    children still RUNNING after it are marked KILLED; with save=True, every running trial
    saves and stops instead, and no other starts (_stop_sweep_saving). A sweep's trial is
    always stopped with save=True, so that the others go on.

    save=True first asks the training workers, through the run's orch.stop_request tag (which
    the run's driver hands to them: train/notices.py), to write a step checkpoint and stop, and
    waits up to `wait_s` for the run to end; the job is stopped outright only if it has not by
    then. Otherwise, a local run's driver (the
    `orch submit` or `orch resume` process) gets SIGINT, which aborts Ray Train; a Ray job or a
    RayJob is stopped through its cluster, which signals its entrypoint.
    """
    run = find_run(uri, ref)
    run_id = run.info.run_id
    if run.info.status != ACTIVE:
        raise OrchError(f"run {run_id} is {run.info.status}, not running: nothing to stop")
    if is_trial(run):
        save = True  # a sweep's trial: its workers save and stop it; the sweep's other trials go on
    sweep = is_sweep(run)
    if sweep and save and (job_backend(run) is not None or driver_alive(run) is not False):
        outcome = _stop_sweep_saving(uri, run, wait_s)
    else:
        outcome = _stop_job(uri, run, wait_s, save and not sweep)
    if sweep:  # its trials' runs whose driver went with it
        from orchestrator.sweep.records import end_running_children

        outcome["trials_killed"] = end_running_children(uri, run_id, "KILLED", "the sweep was stopped")
    return outcome


def _stop_sweep_saving(uri: str, parent, wait_s: float) -> dict:
    """`orch stop --save PARENT`: no trial starts any more (the parent's stop request, which each
    trial reads as it starts), every running trial writes a step checkpoint and stops, and the
    sweep's driver then ends the parent KILLED; `orch resume PARENT` continues each trial from its
    checkpoint. Waits up to `wait_s` for the parent to end, then stops it outright."""
    from orchestrator.sweep.records import children

    parent_id = parent.info.run_id
    asked = f"save (asked {time.strftime('%Y-%m-%d %H:%M:%S')})"
    client = MlflowClient(uri)
    client.set_tag(parent_id, STOP_TAG, asked)
    running = [r.info.run_id for r in children(uri, parent_id).values() if r.info.status == ACTIVE]
    for run_id in running:
        client.set_tag(run_id, STOP_TAG, asked)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if client.get_run(parent_id).info.status != ACTIVE:
            saved = {
                r.info.run_id: r.data.tags.get(STEP_CHECKPOINT_TAG) or r.data.tags.get(LATEST_CHECKPOINT_TAG)
                for r in children(uri, parent_id).values()
                if r.info.run_id in running
            }
            how = (
                f"{len(running)} running trials wrote a checkpoint and stopped, no other started; "
                f"`orch resume {parent_id}` continues them"
            )
            return {
                "run_id": parent_id,
                "status": client.get_run(parent_id).info.status,
                "how": how,
                "trials_saved": saved,
            }
        time.sleep(1)
    outcome = _stop_job(uri, client.get_run(parent_id), min(wait_s, 60.0), save=False)
    outcome["how"] += f"; the trials had not saved within {wait_s:.0f} s"
    return outcome


def _stop_job(uri: str, run, wait_s: float, save: bool) -> dict:
    run_id = run.info.run_id
    backend = job_backend(run)
    if save and (backend is not None or driver_alive(run) is not False):  # workers that can still save
        saved = _stop_with_checkpoint(uri, run_id, wait_s)
        if saved is not None:
            return saved
        wait_s = min(wait_s, 60.0)
    if backend is not None:
        asked = backend.stop_job(run)
        how, wait = asked["how"], asked.get("running", True)
    else:
        how, wait = _signal_driver(run)
    client = MlflowClient(uri)
    if wait:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            current = client.get_run(run_id).info.status
            if current != ACTIVE:
                return {"run_id": run_id, "status": current, "how": how}
            time.sleep(1)
        how += f"; the run had not ended after {wait_s:.0f} s, marked KILLED"
    client.set_tag(run_id, ERROR_TAG, "stopped by `orch stop`")
    client.set_terminated(run_id, status="KILLED")
    return {"run_id": run_id, "status": "KILLED", "how": how}


def _stop_with_checkpoint(uri: str, run_id: str, wait_s: float) -> dict | None:
    """Ask the workers for a step checkpoint and a stop; the outcome once the run has ended,
    None when it has not within `wait_s` (the job is then stopped without one)."""
    client = MlflowClient(uri)
    client.set_tag(run_id, STOP_TAG, f"save (asked {time.strftime('%Y-%m-%d %H:%M:%S')})")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        run = client.get_run(run_id)
        if run.info.status != ACTIVE:
            where = run.data.tags.get(STEP_CHECKPOINT_TAG) or run.data.tags.get(LATEST_CHECKPOINT_TAG)
            how = f"the workers wrote a checkpoint and stopped ({where}); `orch resume {run_id}` continues it"
            return {"run_id": run_id, "status": run.info.status, "how": how, "checkpoint": where}
        time.sleep(1.0)
    return None


def _signal_driver(run) -> tuple[str, bool]:
    """SIGINT to a local run's driver: (what was done, whether to wait for it to end the run)."""
    alive = driver_alive(run)
    if alive is None:
        raise OrchError(
            f"run {run.info.run_id} is driven from host {run.data.tags[DRIVER_HOST_TAG]}: run `orch stop` there"
        )
    if not alive:
        gone = DRIVER_PID_TAG in run.data.tags
        return ("its driver was gone; marked KILLED" if gone else "no driver pid recorded; marked KILLED"), False
    pid = int(run.data.tags[DRIVER_PID_TAG])
    os.kill(pid, signal.SIGINT)
    return f"sent SIGINT to driver pid {pid}", True


def job_backend(run):
    """The module that reaches the cluster job a remote run was submitted as (job_status,
    job_logs, stop_job): targets.ray_cluster for orch.target=ray, targets.kuberay for k8s; None
    for a local run."""
    target = run.data.tags.get(TARGET_TAG)
    if target == "ray":
        from orchestrator.targets import ray_cluster

        return ray_cluster
    if target == "k8s":
        from orchestrator.targets import kuberay

        return kuberay
    return None


def status(uri: str, ref: str) -> dict:
    """summary() plus, for a remote run, its cluster job's state (a Ray job's ray_job_status and
    ray_job_message; a RayJob's jobStatus, jobDeploymentStatus, ...), or job_error saying why it
    could not be read."""
    run = find_run(uri, ref)
    info = summary(run, uri)
    backend = job_backend(run)
    if backend is not None:
        try:
            info.update(backend.job_status(run))
        except Exception as exc:  # an unreachable cluster must not hide what MLflow knows
            info["job_error"] = last_line(str(exc), type(exc).__name__)
    return info


def job_log_chunks(uri: str, run, follow: bool, interval: float = 2.0):
    """A remote run's job output: all of it, or with `follow` as it comes until the job ends."""
    backend = job_backend(run)
    if not follow:
        yield backend.job_logs(run)
    elif hasattr(backend, "follow_logs"):
        yield from backend.follow_logs(run)
    else:  # poll, printing what is new
        seen = ""
        while True:
            text = backend.job_logs(run)
            yield text[len(seen) :] if text.startswith(seen) else text
            seen = text
            if MlflowClient(uri).get_run(run.info.run_id).info.status != ACTIVE:
                return
            time.sleep(interval)


def _best(uri: str, run) -> dict:
    """best_val_top1_error and best_val_top5_error: as logged at the run's end, or while it goes
    on, read at the best epoch so far by the run's rule (orchestrator/recovery/best.py)."""
    logged = {k: run.data.metrics[k] for k in ("best_val_top1_error", "best_val_top5_error") if k in run.data.metrics}
    if len(logged) < 2 and run.data.metrics:
        params = run.data.params  # the flattened spec: checkpoint.metric, checkpoint.mode
        rule = BestRule.of(
            {key: params[f"checkpoint.{key}"] for key in ("metric", "mode") if f"checkpoint.{key}" in params}
        )
        logged = {**best_metrics(uri, run.info.run_id, rule), **logged}
    return {k: logged.get(k) for k in ("best_val_top1_error", "best_val_top5_error")}


def _where(tags: dict) -> str:
    if tags.get(KIND_TAG) == SWEEP:
        return f"sweep of {tags.get(SWEEP_TRIALS_TAG, '?')} trials: " + _target_where(tags)
    return _target_where(tags)


def _target_where(tags: dict) -> str:
    target = tags.get(TARGET_TAG, "?")
    if tags.get(RAY_JOB_ID_TAG):
        return f"{target} ({tags.get(RAY_ADDRESS_TAG)}, job {tags[RAY_JOB_ID_TAG]})"
    host = tags.get(DRIVER_HOST_TAG)
    pid = tags.get(DRIVER_PID_TAG)
    return f"{target} ({host}, pid {pid})" if host else target
