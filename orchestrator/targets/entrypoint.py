"""What a Ray job runs on the cluster, for `orch submit --address` and for KubeRay RayJobs:

    python -m orchestrator.targets.entrypoint --run-id RUN --tracking-uri URI [--resume] \\
        (--spec-file PATH | --spec-b64 B64 | $ORCH_SPEC_B64)

It trains an MLflow run the submitter created, with the same code as a local run
(targets.local.drive), so a remote run records exactly what a local one does. With --resume
(`orch resume`: the submitter reopened the run) it continues the run from the checkpoint
orchestrator.targets.resume.continue_here picks in the run's folder, which the cluster sees. Inside a
Ray job, ray.init() joins the job's cluster. Exit codes and errors are the CLI's: one line on
stderr; a problem found here also ends the run FAILED with it.
"""

import base64
import binascii
import json
import signal
import sys

import click
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator.errors import OrchError, SpecError
from orchestrator.tags import CHECKPOINT_DIR_TAG, DRIVER_NODE_TAG


@click.command()
@click.option("--run-id", required=True, help="The MLflow run to train (created by the submitter, RUNNING).")
@click.option("--tracking-uri", required=True, envvar="MLFLOW_TRACKING_URI", help="Its MLflow store.")
@click.option("--spec-file", type=click.Path(dir_okay=False), help="The resolved spec, as JSON.")
@click.option("--spec-b64", envvar="ORCH_SPEC_B64", help="The resolved spec, as base64 of its JSON.")
@click.option(
    "--resume", is_flag=True, help="Continue the run (reopened by `orch resume`) from its latest good checkpoint."
)
def entrypoint(run_id, tracking_uri, spec_file, spec_b64, resume):
    """Train RUN_ID's job on the Ray cluster this process runs in."""
    from orchestrator.console.progress import format_summary
    from orchestrator.runs import tracking

    stop_on_sigterm()
    tracking.quiet_mlflow()
    run = _running_run(tracking_uri, run_id)
    try:
        spec = read_spec(spec_file, spec_b64)
        outcome = (continue_run if resume else train)(spec, tracking_uri, run)
    except BaseException as exc:  # whatever stopped it before training did: the run says so
        if MlflowClient(tracking_uri).get_run(run_id).info.status == "RUNNING":
            stopped = isinstance(exc, (KeyboardInterrupt, SystemExit))
            tracking.end_run(tracking_uri, run_id, "KILLED" if stopped else "FAILED", str(exc) or type(exc).__name__)
        raise
    click.echo(format_summary(outcome))


def read_spec(spec_file: str | None, spec_b64: str | None):
    """The spec the submitter resolved (paths already absolute), validated again here."""
    from orchestrator.spec.load import spec_from_dict

    if spec_file:
        source, text = spec_file, _read(spec_file)
    elif spec_b64:
        source = "--spec-b64"
        try:
            text = base64.b64decode(spec_b64, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise SpecError("--spec-b64: not base64 of a JSON spec") from None
    else:
        raise SpecError("no spec: pass --spec-file PATH or --spec-b64 B64 (or set ORCH_SPEC_B64)")
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise SpecError(f"{source}: not valid JSON ({exc})") from None
    return spec_from_dict(raw, source=source)


def train(spec, uri: str, run):
    """Check the job against this cluster, record where it is driven from, and train."""
    from orchestrator.spec import preflight
    from orchestrator.targets import cluster
    from orchestrator.targets.local import drive
    from orchestrator.targets.naming import checkpoint_dir

    preflight.tell_warnings(preflight.plan(spec))  # the spec and its data, checked where the data is read
    cluster.connect()
    cluster.check_resources(spec.scaling)
    run_id = run.info.run_id
    run_dir = run.data.tags.get(CHECKPOINT_DIR_TAG) or checkpoint_dir(spec, run_id)
    _record_driver(uri, run_id, {CHECKPOINT_DIR_TAG: run_dir})
    return drive(spec, uri, run_id, run_dir)


def continue_run(spec, uri: str, run):
    """Continue a run `orch resume` reopened, as a local resume does (orchestrator.targets.resume), here
    where its checkpoint folder and data are."""
    from orchestrator.targets import cluster
    from orchestrator.targets.resume import continue_here

    cluster.connect()
    _record_driver(uri, run.info.run_id)
    return continue_here(uri, run, spec, reopen=False)


def _record_driver(uri: str, run_id: str, tags: dict | None = None) -> None:
    """Tag who drives the run (this process, on this Ray node), with `tags`."""
    import ray

    from orchestrator.runs import tracking
    from orchestrator.runs.driver import driver_tags

    node = {DRIVER_NODE_TAG: ray.get_runtime_context().get_node_id()}
    tracking.set_tags(uri, run_id, {**driver_tags(), **node, **(tags or {})})


def _running_run(uri: str, run_id: str):
    try:
        run = MlflowClient(uri).get_run(run_id)
    except MlflowException as exc:
        raise OrchError(
            f"--run-id {run_id}: no such run in {uri} ({str(exc).splitlines()[0]}); is the "
            "tracking URI one this node reaches?"
        ) from None
    if run.info.status != "RUNNING":
        raise OrchError(f"--run-id {run_id} is {run.info.status}: the submitter creates a RUNNING run to train")
    return run


def stop_on_sigterm() -> None:
    """`ray job stop` and a deleted pod send the entrypoint SIGTERM: take it as Ctrl-C, through
    whatever SIGINT handler is in place when it comes, so that the run ends KILLED instead of
    being left RUNNING. Both entrypoints install it; ray.init() replaces it with Ray's own
    (sys.exit), so where it is installed says how long it holds: the trainer's entrypoint
    installs it first (SIGTERM before Ray is joined; after, Ray's SystemExit, which drive() ends
    KILLED as well), the sweep's after ray.init (Tune takes SIGINT as "stop the trials")."""

    def handler(signum, frame):
        on_sigint = signal.getsignal(signal.SIGINT)
        if callable(on_sigint):
            on_sigint(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as exc:
        raise SpecError(f"--spec-file {path}: {exc.strerror}") from None


def main(argv=None):
    run_command(entrypoint, "orchestrator.targets.entrypoint", argv)


def run_command(command: click.Command, prog_name: str, argv=None):
    """A cluster-side entrypoint: one line on stderr and the CLI's exit codes for errors, as
    `orch` itself."""
    try:
        command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except OrchError as exc:
        click.echo(f"orch: {exc.label}: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except KeyboardInterrupt:  # stopped (SIGTERM) before training began; the run is marked KILLED
        click.echo("orch: stopped: before training began", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
