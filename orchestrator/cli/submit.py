"""`orch submit SPEC`: validate a job spec and train it where the user asks.

Targets: `local` (the Ray this machine runs, embedded when none is running), `ray` (a Ray
cluster through its Jobs API: --address, $RAY_ADDRESS as http(s)://..., or cluster.address),
`k8s` (a KubeRay RayJob created with the kubernetes client).
"""

import click
import yaml

from orchestrator import startup_trace
from orchestrator.cli.options import emit_json, output_option, set_option, target_options
from orchestrator.console import terminal
from orchestrator.spec import load_spec
from orchestrator.targets import jobs_address


@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@set_option
@target_options(
    target="local, or ray when an address is given",
    address="$RAY_ADDRESS when it is http(s)://..., else the spec's cluster.address",
    namespace="cluster.kubernetes.namespace",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the resolved spec and what follows from it (with --target k8s, the RayJob manifest); start nothing.",
)
@output_option
def submit(spec_path, overrides, target, address, namespace, image, detach, dry_run, output):
    """Train the job described by the YAML file SPEC on Ray (embedded when none is running).

    The embedded Ray runs without its dashboard; ORCH_RAY_DASHBOARD=1 starts it with one on
    127.0.0.1:8265.
    """
    spec = load_spec(spec_path, overrides)
    address = jobs_address(spec, address)
    target = target or ("ray" if address else "local")
    if not dry_run and target != "k8s":
        terminal.say(terminal.checking(spec.name, target, address))  # before torch, Ray and MLflow load
    progress_to_stderr = output == "json"
    if target == "k8s":
        from orchestrator.targets.kuberay import submit_k8s

        outcome = submit_k8s(
            spec, spec_path, namespace=namespace, image=image, dry_run=dry_run, detach=detach, output=output
        )
    elif dry_run:
        from orchestrator.spec.preflight import plan, tell_warnings

        checked = plan(spec, require_data=False)
        tell_warnings(checked)
        _print_dry_run(spec, checked, output)
        return
    elif target == "ray":
        from orchestrator.targets.ray_cluster import submit_remote

        outcome = submit_remote(spec, spec_path, address=address, detach=detach, progress_to_stderr=progress_to_stderr)
    else:
        outcome = _run_here(spec, spec_path, progress_to_stderr)
    if outcome is not None:
        _print_outcome(outcome, output)


def _run_here(spec, spec_path: str, progress_to_stderr: bool):
    """Train on this machine's Ray. Once the spec and data are checked (one line on bad input,
    nothing started), Ray starts (seconds spent mostly waiting for its processes) while a thread
    imports the trainer and opens the MLflow store."""
    from concurrent.futures import ThreadPoolExecutor

    from orchestrator.spec import preflight
    from orchestrator.targets import cluster

    preflight.tell_warnings(preflight.plan(spec))
    startup_trace.mark("driver: spec and data checked")
    with ThreadPoolExecutor(1) as pool:
        trainer = pool.submit(_import_trainer, spec)
        terminal.say(terminal.connecting())
        cluster.connect()
        run_local = trainer.result()
    startup_trace.mark("driver: imports done and Ray ready")
    return run_local(spec, spec_path, progress_to_stderr=progress_to_stderr, checked=True)


def _import_trainer(spec):
    from orchestrator.runs import tracking
    from orchestrator.targets.local import run_local

    tracking.open_store(tracking.tracking_uri(spec))
    return run_local


def _print_outcome(outcome, output: str) -> None:
    from orchestrator.console.progress import format_summary

    emit_json(outcome.as_json()) if output == "json" else click.echo(format_summary(outcome))


def _print_dry_run(spec, plan: dict, output: str) -> None:
    resolved = spec.model_dump(mode="json")
    if output == "json":
        emit_json({"spec": resolved, "plan": plan})
        return
    click.echo("# resolved spec")
    click.echo(yaml.safe_dump(resolved, sort_keys=False).rstrip())
    click.echo("\n# what follows from it")
    click.echo(yaml.dump(plan, Dumper=_PlanDumper, sort_keys=False, width=1000).rstrip())


class _PlanDumper(yaml.SafeDumper):
    """The plan one key a line, its lists on that line ([3334, 3333, 3333])."""


_PlanDumper.add_representer(list, lambda dumper, value: dumper.represent_sequence("tag:yaml.org,2002:seq", value, True))
