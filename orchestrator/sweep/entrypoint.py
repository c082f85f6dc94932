"""What a sweep's Ray job (or RayJob) runs on the cluster:

    python -m orchestrator.sweep.entrypoint --parent-run-id PARENT --tracking-uri URI

It runs the trials of the sweep PARENT records (sweep/trials.json) that have no FINISHED run,
on this cluster's Tune, with the same code as a local sweep (sweep.driver.drive_sweep). The
submitter created (or reopened) the parent; `ray job stop` sends SIGTERM, taken as Ctrl-C:
Tune stops the trials and they are marked KILLED.
"""

import click


@click.command()
@click.option("--parent-run-id", required=True, help="The sweep's parent run (RUNNING).")
@click.option("--tracking-uri", required=True, envvar="MLFLOW_TRACKING_URI", help="Its MLflow store.")
def entrypoint(parent_run_id, tracking_uri):
    """Run the sweep PARENT_RUN_ID's unfinished trials on the Ray cluster this process runs in."""
    from mlflow.tracking import MlflowClient

    from orchestrator.runs import tracking
    from orchestrator.runs.driver import driver_tags
    from orchestrator.sweep import records
    from orchestrator.sweep.driver import drive_sweep
    from orchestrator.sweep.spec import SweepSpec
    from orchestrator.targets import cluster
    from orchestrator.targets.entrypoint import stop_on_sigterm

    tracking.quiet_mlflow()
    try:
        trials = records.recorded_trials(tracking_uri, parent_run_id)
        sweep = SweepSpec.model_validate(records.artifact_json(tracking_uri, parent_run_id, "sweep/sweep.json"))
        cluster.connect()
        stop_on_sigterm()  # after ray.init, which installs its own: Tune takes SIGINT as "stop the trials"
        tracking.set_tags(tracking_uri, parent_run_id, driver_tags())
    except BaseException as exc:
        if MlflowClient(tracking_uri).get_run(parent_run_id).info.status == "RUNNING":
            tracking.end_run(tracking_uri, parent_run_id, "FAILED", str(exc) or type(exc).__name__)
        raise
    drive_sweep(tracking_uri, parent_run_id, sweep, trials)


def main(argv=None):
    from orchestrator.targets.entrypoint import run_command

    run_command(entrypoint, "orchestrator.sweep.entrypoint", argv)


if __name__ == "__main__":
    main()
