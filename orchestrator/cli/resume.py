"""`orch resume RUN`: continue a finished, failed or killed run from its latest good checkpoint,
where it ran (the local Ray, a Ray cluster's Jobs API, a KubeRay RayJob) unless told otherwise."""

import json

import click

from orchestrator.cli.options import output_option, set_option, target_options, uri_option


@click.command()
@click.argument("run")
@set_option
@target_options(
    target="where RUN ran (its orch.target tag; ray when --address is given)",
    address="the cluster RUN ran on, else $RAY_ADDRESS when it is http(s)://..., else cluster.address",
    namespace="RUN's namespace, else cluster.kubernetes.namespace",
)
@uri_option
@output_option
def resume(run, overrides, target, address, namespace, image, detach, uri, output):
    """Continue RUN (an MLflow run id or unique name) in the same run, e.g. for one more epoch:

    \b
      orch resume RUN --set training.epochs=5

    A run submitted to a Ray cluster continues as a new Ray job on that cluster, a Kubernetes
    run as a new RayJob, which picks the checkpoint to continue from on the cluster. --target
    or --address moves a run, with the same meaning as in `orch submit`.
    """
    from orchestrator.progress import format_summary
    from orchestrator.resume import resume_run

    outcome = resume_run(
        run,
        overrides,
        uri=uri,
        target=target,
        address=address,
        namespace=namespace,
        image=image,
        detach=detach,
        progress_to_stderr=output == "json",
    )
    click.echo(json.dumps(outcome.as_json()) if output == "json" else format_summary(outcome))
