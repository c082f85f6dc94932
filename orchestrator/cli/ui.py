"""`orch ui`: MLflow's dashboard on the store orch's runs are in, started with this interpreter
(a user of `make demo` has no `mlflow` on PATH)."""

import os
import sys

import click

from orchestrator.cli.options import uri_option
from orchestrator.errors import OrchError

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 5000


@click.command()
@uri_option
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True)
def ui(uri, host, port):
    """Serve MLflow's UI on the runs `orch submit` records, in the same store (--tracking-uri,
    else $MLFLOW_TRACKING_URI, else ./mlflow.db), until Ctrl-C."""
    from orchestrator.runs.tracking import tracking_uri

    uri = tracking_uri(explicit=uri)
    if uri.startswith(("http://", "https://")):
        click.echo(f"{uri} is an MLflow server: its UI is at that address")
        return
    check_store(uri)
    click.echo(f"MLflow UI for {uri} at http://{host}:{port} (Ctrl-C stops it)")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, ui_command(uri, host, port), ui_environment())  # Ctrl-C reaches MLflow directly


def ui_command(uri: str, host: str, port: int) -> list[str]:
    """The MLflow UI's command line: this interpreter's mlflow, one server process (MLflow's
    default is 4, each loading MLflow: seconds on a small machine, for one user)."""
    return [
        sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
        "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip


def ui_environment() -> dict:
    """This environment, without MLflow's job runner (GenAI jobs: worker processes orch's runs do
    not need) unless MLFLOW_SERVER_ENABLE_JOB_EXECUTION says otherwise."""
    return {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}


def store_path(uri: str) -> str | None:
    """The file (sqlite) or folder (a file store) that holds a local store; None for a database
    server, which cannot be checked from here."""
    for scheme in ("sqlite:///", "file://"):
        if uri.startswith(scheme):
            return uri[len(scheme) :]
    return None if "://" in uri else uri


def check_store(uri: str) -> None:
    """A local store must exist: `orch ui` on a missing one would create it empty."""
    path = store_path(uri)
    if path is not None and not os.path.exists(path):
        raise OrchError(f"no MLflow store at {path} yet: `orch submit SPEC` creates it (or pass --tracking-uri URI)")
