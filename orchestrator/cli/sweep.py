"""`orch sweep SWEEP.yaml`: run a job's variations (a grid, random draws) as trials on Ray Tune,
each an orch run nested under one MLflow parent run."""

import click
import yaml

from orchestrator.cli.options import emit_json, output_option, set_option, target_options, uri_option


@click.command()
@click.argument("sweep_path", metavar="SWEEP", type=click.Path(dir_okay=False))
@set_option
@target_options(
    target="local, or ray when an address is given",
    address="with --target ray, $RAY_ADDRESS when it is http(s)://..., else the job's cluster.address",
    namespace="the job's cluster.kubernetes.namespace",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="List the trials and what each needs (with --target k8s, also the RayJob manifest); start nothing.",
)
@uri_option
@output_option
def sweep(sweep_path, overrides, target, address, namespace, image, detach, dry_run, uri, output):
    """Run the trials SWEEP.yaml describes on Ray Tune (the embedded Ray when none is running):
    every combination of its grid: values (times random: draws), each an orch run with its own
    checkpoints and metrics, nested under one parent run. --set sets a job key in every trial
    (or a sweep key: grid.KEY, max_concurrent_trials, ...).

    --address runs the whole sweep as one Ray job on that cluster; --target k8s as one KubeRay
    RayJob whose Ray cluster is made for the sweep: max_concurrent_trials trials at once (1 when
    the sweep file does not say), each with the workers its scaling asks for.

    \b
      orch sweep jobs/sweeps/degradation_cifar10.yaml
      orch sweep SWEEP.yaml --target k8s --image IMG --detach
      orch stop PARENT          # ends every trial; the runs are marked KILLED
      orch resume PARENT        # runs the trials that did not finish
      orch report PARENT        # the table, figures and verdicts
    """
    from orchestrator.sweep import driver

    target = target or ("ray" if address else "local")
    if dry_run:
        planned, trials = driver.plan_sweep(sweep_path, overrides)
        rayjob = None
        if target == "k8s":
            from orchestrator.sweep import kube

            planned, rayjob = kube.dry_run(planned, trials, uri=uri, namespace=namespace, image=image)
        _print_plan(planned, trials, output, rayjob)
        return
    result = driver.run_sweep(
        sweep_path,
        overrides,
        uri=uri,
        target=target,
        address=address,
        namespace=namespace,
        image=image,
        detach=detach,
    )
    print_result(result, output)


def print_result(result: dict, output: str) -> None:
    """The sweep's outcome: a line per trial, or with --output json the whole of it."""
    if output == "json":
        emit_json(result)
        return
    click.echo(f"sweep {result['parent_run_id']}: {result['status']}")
    for trial in result["trials"]:
        metrics = trial["metrics"]
        error = metrics.get("val_top1_error")
        shown = f"  val top-1 {error:.2f}%" if error is not None else ""
        click.echo(
            f"  trial {trial['index']} {_label(trial['overrides'])}: {trial['status']} {trial['run_id'] or ''}{shown}"
        )


def _print_plan(sweep, trials, output: str, rayjob: dict | None = None) -> None:
    """The trials; with --target k8s, the RayJob too (text: as YAML, the rest as comments)."""
    from orchestrator.sweep.trials import resources

    rows = [
        {"index": t.index, "overrides": t.overrides, "name": t.spec.name, "resources": resources(t.spec)}
        for t in trials
    ]
    if output == "json":
        extra = {"rayjob": rayjob} if rayjob else {}
        emit_json({"trials": rows, "max_concurrent_trials": sweep.max_concurrent_trials, **extra})
        return
    limit = sweep.max_concurrent_trials or "as many as the cluster's resources fit"
    mark, note = (
        ("# ", "; the RayJob's Ray cluster is made for that many (1 on k8s unless set)") if rayjob else ("", "")
    )
    click.echo(f"# {len(trials)} trials of {trials[0].spec.name}, at most {limit} at once{note}")
    for row in rows:
        need = ", ".join(f"{v:g} {k}" for k, v in row["resources"].items())
        click.echo(f"{mark}trial {row['index']}: {_label(row['overrides'])}  ({need})")
    if rayjob:
        from orchestrator.targets.kuberay_manifest import PLACEHOLDER_RUN_ID

        click.echo(f"# dry run: nothing created; {PLACEHOLDER_RUN_ID} stands for the sweep's parent run id")
        click.echo(yaml.safe_dump(rayjob, sort_keys=False, width=1_000_000).rstrip())


def _label(overrides: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in overrides.items())
