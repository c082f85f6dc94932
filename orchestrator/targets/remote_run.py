"""The life of a remote run on the submitting side: create it, submit its Ray job, print its
epochs until the job ends, and make sure the run ends FINISHED, FAILED or KILLED whatever
happened to the job (one that could not start never ends its run itself)."""

import re

import click
from mlflow.tracking import MlflowClient

from orchestrator import tracking
from orchestrator.errors import JobFailed, JobInterrupted
from orchestrator.progress import EpochPrinter
from orchestrator.spec.schema import JobSpec
from orchestrator.targets import ray_jobs
from orchestrator.targets.local import checkpoint_dir, ray_run_name

_RAY_INFO = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(DEBUG|INFO) ")


def start(spec: JobSpec, spec_path: str | None, uri: str, address: str) -> str:
    """Create the run, tagged with where it goes; returns its id."""
    run_id = tracking.start_run(spec, spec_path, uri)
    tracking.set_tags(uri, run_id, {"orch.target": "ray", "orch.ray_address": address,
                                    "orch.checkpoint_dir": checkpoint_dir(spec, run_id)})
    return run_id


def submit(jobs, spec: JobSpec, uri: str, run_id: str, entrypoint: str, runtime_env: dict) -> str:
    """Submit the job (Ray uploads the working_dir) and tag its id; the run ends FAILED (KILLED on
    Ctrl-C) if that does not happen."""
    job_id = ray_run_name(spec, run_id)
    try:
        jobs.submit_job(entrypoint=entrypoint, submission_id=job_id, runtime_env=runtime_env,
                        metadata={"orch.run_id": run_id})
        tracking.set_tags(uri, run_id, {"orch.ray_job_id": job_id})
    except KeyboardInterrupt:
        tracking.end_run(uri, run_id, "KILLED", "interrupted while submitting the Ray job")
        raise JobInterrupted(f"run {run_id} interrupted while submitting: marked KILLED") from None
    except Exception as exc:
        tracking.end_run(uri, run_id, "FAILED", f"submitting the Ray job failed: {exc}")
        raise JobFailed(f"run {run_id} FAILED: the Ray Jobs API at {jobs.get_address()} did not take the job: "
                        f"{_last_line(str(exc))}") from None
    click.echo(f"run {run_id}: Ray job {job_id} on {jobs.get_address()} (`orch logs {run_id}` shows its output)",
               err=True)
    return job_id


def detached(jobs, job_id: str, uri: str, run_id: str) -> dict:
    state = jobs.get_job_status(job_id)
    return dict(outcome(uri, run_id), status="RUNNING" if str(state) == "RUNNING" else "SUBMITTED")


def follow(jobs, job_id: str, spec: JobSpec, uri: str, run_id: str, progress_to_stderr: bool = False, *,
           stop_wait_s: float = 60) -> dict:
    """Print each epoch as the run logs it until the job ends; Ctrl-C stops the job."""
    printer = EpochPrinter(uri, run_id, spec.training.epochs, err=progress_to_stderr)
    printer.start()
    try:
        state = ray_jobs.wait(jobs, job_id)
    except KeyboardInterrupt:
        click.echo(f"stopping Ray job {job_id} ...", err=True)
        jobs.stop_job(job_id)
        ray_jobs.wait(jobs, job_id, timeout_s=stop_wait_s + 15)
        settle(uri, run_id, "KILLED", "stopped by Ctrl-C in `orch submit`")
        raise JobInterrupted(f"run {run_id} interrupted: Ray job {job_id} stopped, run marked KILLED, "
                             "checkpoints kept") from None
    finally:
        printer.stop()
    settle(uri, run_id, "KILLED" if str(state) == "STOPPED" else "FAILED", lambda: _job_failure(jobs, job_id))
    result = outcome(uri, run_id)
    if result["status"] == "KILLED":
        raise JobInterrupted(f"run {run_id} was stopped (Ray job {job_id} {state}): marked KILLED, checkpoints kept")
    if result["status"] != "FINISHED":
        error = MlflowClient(uri).get_run(run_id).data.tags.get("orch.error", "")
        raise JobFailed(f"run {run_id} {result['status']}: {_last_line(error)} "
                        f"(`orch logs {run_id}` has the job's output)")
    return result


def settle(uri: str, run_id: str, status: str, error) -> bool:
    """End the run with `status` if the job ended without ending it (it could not start, or was
    killed before it could): never leave a run RUNNING. `error` is the cause, or a function
    that finds it. True if it had to."""
    if MlflowClient(uri).get_run(run_id).info.status != "RUNNING":
        return False
    tracking.end_run(uri, run_id, status, error() if callable(error) else error)
    return True


def outcome(uri: str, run_id: str) -> dict:
    """What the run recorded, in the shape run_local returns."""
    run = MlflowClient(uri).get_run(run_id)
    keep = tracking.EPOCH_METRICS + tuple(f"best_{k}" for k in tracking.BEST_METRICS)
    metrics = {k: v for k, v in run.data.metrics.items() if k in keep}
    if "orch.epoch" in run.data.tags:
        metrics["epoch"] = int(run.data.tags["orch.epoch"])
    return {"run_id": run_id, "status": run.info.status, "metrics": metrics,
            "best_checkpoint": run.data.tags.get("orch.best_checkpoint"), "tracking_uri": uri}


def _job_failure(jobs, job_id: str) -> str:
    """Why a job ended without ending its run: Ray's message and the end of its log (which Ray's
    message holds already when the entrypoint failed)."""
    try:
        info = jobs.get_job_info(job_id)
        tail = "\n".join(jobs.get_job_logs(job_id).strip().splitlines()[-20:])
    except Exception as exc:  # the head went away: say so rather than nothing
        return f"Ray job {job_id}: its status could not be read ({exc})"
    message = (info.message or "").strip()
    if tail and tail.splitlines()[-1] not in message:
        message = f"{message}\n{tail}"
    return f"Ray job {job_id} {info.status}: {message}"


def _last_line(text: str) -> str:
    """The last line that says what went wrong: not Ray's own INFO lines or its "Running
    entrypoint" line, which the job's log may hold after the entrypoint's error."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    said = [line for line in lines if not (_RAY_INFO.match(line) or line.startswith("Running entrypoint for job"))]
    return (said or lines or ["no cause recorded"])[-1]
