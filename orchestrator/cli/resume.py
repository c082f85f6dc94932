"""`orch resume RUN`: continue a finished, failed or killed run from its latest good checkpoint,
where it ran (the local Ray, a Ray cluster's Jobs API, a KubeRay RayJob) unless told otherwise."""

import click

from orchestrator.cli.options import emit_json, output_option, set_option, target_options, uri_option


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
    or --address moves a run, with the same meaning as in `orch submit`. A sweep's parent run
    (`orch sweep`) runs the trials that did not finish, each from its own latest checkpoint.
    """
    from orchestrator.console.progress import format_summary
    from orchestrator.targets.resume import resume_run, sweep_parent

    parent = sweep_parent(uri, run)
    if parent is not None:
        from orchestrator.cli.sweep import print_result
        from orchestrator.sweep.driver import resume_sweep

        if overrides or target or address or namespace or image or detach:
            raise click.UsageError("a sweep resumes as it ran: --set and the target options do not apply")
        print_result(resume_sweep(parent), output)
        return

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
    emit_json(outcome.as_json()) if output == "json" else click.echo(format_summary(outcome))
