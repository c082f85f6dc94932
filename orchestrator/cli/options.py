"""Options shared by several commands, defined once; and where --output json's one object goes."""

import io
import json
import os
import sys

import click

_json_stream = None  # where emit_json writes while --output json holds stdout for it


def _json_mode(ctx: click.Context, _param, value: str) -> str:
    """--output json: from here on, whatever anything prints to stdout (Ray's log monitor and
    warnings, a library's print, a child process that inherits the descriptor) goes to stderr;
    the command's one JSON object goes to the real stdout through emit_json."""
    if value == "json" and _json_stream is None:
        _hold_stdout(ctx)
    return value


def _hold_stdout(ctx: click.Context) -> None:
    global _json_stream
    saved = sys.stdout
    saved.flush()
    try:
        real_fd = saved.fileno() == 1
    except (AttributeError, ValueError, io.UnsupportedOperation):
        real_fd = False  # a test's captured stdout: Python's stream only
    if real_fd:
        # A copy of the descriptor for the object; descriptor 1 itself now leads to stderr, for
        # the rest of this process (Ray's threads and atexit handlers print after the command).
        _json_stream = os.fdopen(os.dup(1), "w", encoding="utf-8")
        os.dup2(2, 1)
    else:
        _json_stream = saved
        ctx.call_on_close(_release)
    sys.stdout = sys.stderr


def _release() -> None:
    """Give a captured stdout back (tests that invoke several commands in one process)."""
    global _json_stream
    sys.stdout, _json_stream = _json_stream, None


def emit_json(obj, **dumps) -> None:
    """The command's one JSON object, on stdout (the real one under --output json)."""
    text = json.dumps(obj, **dumps)
    if _json_stream is None:
        click.echo(text)
        return
    _json_stream.write(text + "\n")
    _json_stream.flush()


output_option = click.option(
    "--output",
    "-o",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    callback=_json_mode,
    is_eager=True,
    help="json: one JSON object on stdout, everything else on stderr.",
)

uri_option = click.option(
    "--tracking-uri",
    "uri",
    default=None,
    metavar="URI",
    help="MLflow store (default: $MLFLOW_TRACKING_URI, else ./mlflow.db).",
)

set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override a spec value (YAML-typed), e.g. --set training.epochs=2. Repeatable.",
)


def target_options(target: str, address: str, namespace: str):
    """--target, --address, --namespace, --image and --detach, as `orch submit` and `orch resume`
    take them; `target`, `address` and `namespace` say the defaults in the command's words."""
    options = (
        click.option(
            "--target",
            type=click.Choice(["local", "ray", "k8s"]),
            default=None,
            help="Where to run: local, ray (a Ray cluster's Jobs API; implied by an http(s) address), "
            f"k8s (a KubeRay RayJob). Default: {target}.",
        ),
        click.option(
            "--address",
            metavar="URL",
            default=None,
            help=f"Ray Jobs API of a cluster, http://HEAD:8265 (default: {address}).",
        ),
        click.option("--namespace", default=None, help=f"k8s: namespace (default: {namespace})."),
        click.option("--image", default=None, help="k8s: training image (default: cluster.kubernetes.image)."),
        click.option("--detach", is_flag=True, help="ray/k8s: submit, print the run id and return."),
    )

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate
