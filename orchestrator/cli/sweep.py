"""`orch sweep SWEEP.yaml`: run a job's variations (a grid, random draws) as trials on Ray Tune,
each an orch run nested under one MLflow parent run."""

import json

import click

from orchestrator.cli.options import output_option, set_option, uri_option


@click.command()
@click.argument("sweep_path", metavar="SWEEP", type=click.Path(dir_okay=False))
@set_option
@click.option(
    "--address",
    metavar="URL",
    default=None,
    help="Run the sweep as one Ray job on the cluster whose Jobs API is at URL (http://HEAD:8265).",
)
@click.option("--detach", is_flag=True, help="With --address: submit, print the parent run and return.")
@click.option("--dry-run", is_flag=True, help="List the trials and what each needs; start nothing.")
@uri_option
@output_option
def sweep(sweep_path, overrides, address, detach, dry_run, uri, output):
    """Run the trials SWEEP.yaml describes on Ray Tune (the embedded Ray when none is running):
    every combination of its grid: values (times random: draws), each an orch run with its own
    checkpoints and metrics, nested under one parent run. --set sets a job key in every trial
    (or a sweep key: grid.KEY, max_concurrent_trials, ...).

    \b
      orch sweep jobs/sweeps/degradation_fashion.yaml
      orch stop PARENT          # ends every trial; the runs are marked KILLED
      orch resume PARENT        # runs the trials that did not finish
      orch report PARENT        # the table, figures and verdicts
    """
    from orchestrator.sweep import driver

    if dry_run:
        _print_plan(*driver.plan_sweep(sweep_path, overrides), output)
        return
    result = driver.run_sweep(sweep_path, overrides, uri=uri, address=address, detach=detach)
    print_result(result, output)


def print_result(result: dict, output: str) -> None:
    """The sweep's outcome: a line per trial, or with --output json the whole of it."""
    if output == "json":
        click.echo(json.dumps(result))
        return
    click.echo(f"sweep {result['parent_run_id']}: {result['status']}")
    for trial in result["trials"]:
        metrics = trial["metrics"]
        error = metrics.get("val_top1_error")
        shown = f"  val top-1 {error:.2f}%" if error is not None else ""
        click.echo(
            f"  trial {trial['index']} {_label(trial['overrides'])}: {trial['status']} {trial['run_id'] or ''}{shown}"
        )


def _print_plan(sweep, trials, output: str) -> None:
    from orchestrator.sweep.trials import resources

    rows = [
        {"index": t.index, "overrides": t.overrides, "name": t.spec.name, "resources": resources(t.spec)}
        for t in trials
    ]
    if output == "json":
        click.echo(json.dumps({"trials": rows, "max_concurrent_trials": sweep.max_concurrent_trials}))
        return
    limit = sweep.max_concurrent_trials or "as many as the cluster's resources fit"
    click.echo(f"# {len(trials)} trials of {trials[0].spec.name}, at most {limit} at once")
    for row in rows:
        need = ", ".join(f"{v:g} {k}" for k, v in row["resources"].items())
        click.echo(f"trial {row['index']}: {_label(row['overrides'])}  ({need})")


def _label(overrides: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in overrides.items())
