"""Options shared by several commands, defined once."""

import click

from orchestrator.console.stdout import emit_json, json_mode

__all__ = ["emit_json", "output_option", "uri_option", "set_option", "target_options"]

output_option = click.option(
    "--output",
    "-o",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    callback=json_mode,
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
