"""`orch submit SPEC`: validate a job spec and train it."""

import json

import click
import yaml

from orchestrator.cli.options import output_option, set_option
from orchestrator.spec import load_spec


@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@set_option
@click.option("--dry-run", is_flag=True, help="Print the resolved spec and what follows from it; start nothing.")
@output_option
def submit(spec_path, overrides, dry_run, output):
    """Train the job described by the YAML file SPEC on Ray (embedded when none is running)."""
    spec = load_spec(spec_path, overrides)
    if dry_run:
        from orchestrator.preflight import plan

        _print_dry_run(spec, plan(spec, require_data=False), output)
        return
    from orchestrator.progress import format_summary
    from orchestrator.targets.local import run_local

    outcome = run_local(spec, spec_path, progress_to_stderr=output == "json")
    if output == "json":
        click.echo(json.dumps({k: outcome[k] for k in ("run_id", "status", "metrics", "best_checkpoint")}))
    else:
        click.echo(format_summary(outcome, outcome["tracking_uri"]))


def _print_dry_run(spec, plan: dict, output: str) -> None:
    resolved = spec.model_dump(mode="json")
    if output == "json":
        click.echo(json.dumps({"spec": resolved, "plan": plan}))
        return
    click.echo("# resolved spec")
    click.echo(yaml.safe_dump(resolved, sort_keys=False).rstrip())
    click.echo("\n# what follows from it")
    click.echo(yaml.safe_dump(plan, sort_keys=False, default_flow_style=None).rstrip())
