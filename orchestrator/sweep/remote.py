"""A sweep on a Ray cluster (`orch sweep --address`): the submitter checks every trial against
the cluster, creates the parent run and submits one Ray job whose entrypoint
(`python -m orchestrator.sweep.entrypoint --parent-run-id P`) runs the trials on that cluster's
Tune (sweep.driver.drive_sweep, as a local sweep does). The parent's tags name the job, so
`orch status/logs/stop PARENT` reach it; `orch resume PARENT` submits the next one (`-rN`).
Its requests to the cluster are ray_cluster's, retried as theirs are (targets/retry.py).
"""

import click

from orchestrator.errors import JobFailed, last_line
from orchestrator.runs import tracking
from orchestrator.runs.outcome import ended_with_job
from orchestrator.sweep import records
from orchestrator.targets import naming, ray_cluster


def check(trials, address: str, uri: str | None) -> tuple[str, str]:
    """Each trial's spec against the cluster at `address`: (address as used, MLflow store)."""
    for trial in trials:
        address, uri = ray_cluster.check_cluster(trial.spec, address, uri)
    return address, uri


def submit(uri: str, parent_id: str, trials, address: str, resume: int = 0, detach: bool = False) -> dict:
    """Submit the sweep's job (its `resume`-th) and, unless `detach`, follow its output to its end."""
    jobs = ray_cluster.client(address)
    job_id = naming.sweep_job_id(trials[0].spec, parent_id, resume)
    try:
        ray_cluster.submit_once(
            jobs,
            job_id,
            entrypoint=naming.sweep_command(parent_id, uri, python=ray_cluster.cluster_python(address)),
            runtime_env=ray_cluster.runtime_env(trials[0].spec, uri),
            metadata=naming.job_metadata(parent_id),
        )
    except Exception as exc:
        tracking.end_run(uri, parent_id, "FAILED", f"submitting the Ray job failed: {exc}")
        why = last_line(str(exc))
        raise JobFailed(f"sweep {parent_id} FAILED: the Ray Jobs API did not take the job: {why}") from None
    tracking.set_tags(uri, parent_id, ray_cluster.job_tags(address, job_id))
    click.echo(f"sweep {parent_id}: Ray job {job_id} on {address}", err=True)
    if detach:
        return records.outcome(uri, parent_id, trials)
    return follow(uri, parent_id, trials, jobs, job_id)


def follow(uri: str, parent_id: str, trials, jobs, job_id: str) -> dict:
    """The job's output on stderr until it ends; Ctrl-C stops it (its trials end KILLED)."""
    from mlflow.tracking import MlflowClient

    try:
        for chunk in ray_cluster.follow_logs(MlflowClient(uri).get_run(parent_id)):
            click.echo(chunk, nl=False, err=True)
        state = ray_cluster.wait(jobs, job_id)
    except KeyboardInterrupt:
        ray_cluster.ask(jobs, jobs.stop_job, job_id)
        ray_cluster.wait(jobs, job_id, timeout_s=ray_cluster.STOP_WAIT_S + 15)
        state = "STOPPED"
    records.end_running_children(uri, parent_id, "KILLED", f"the sweep's Ray job {job_id} ended {state}")
    tracking.end_if_running(uri, parent_id, ended_with_job(state), f"the sweep's Ray job {job_id} ended {state}")
    return records.settled(uri, parent_id, trials)
