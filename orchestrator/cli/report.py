"""`orch report RUN_OR_PARENT[,...]`: a sweep's or some runs' results as the paper shows them."""

import json

import click

from orchestrator.cli.options import output_option, uri_option


@click.command()
@click.argument("runs", metavar="RUN_OR_PARENT[,...]")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for the PNGs, report.html, report.json, report.txt and report.md.  [default: ./reports/<run id>]",
)
@uri_option
@output_option
def report(runs, out_dir, uri, output):
    """Tabulate, plot and judge a sweep's trial runs (or a list of runs) against the paper.

    RUN_OR_PARENT is a sweep's parent run (its FINISHED trial runs are reported) or
    comma-separated run ids or names: training runs, and `orch ensemble` runs. Runs are grouped
    into configurations (what a trial varied, seed aside); each row gives the final and best
    validation errors and the final training error as mean ± std over seeds, the best of N,
    and the paper's number for the same setting, marked not comparable where the data or the
    test protocol differ. The curves are drawn as the paper's Fig. 4 and 6. The verdicts check
    the paper's findings (deeper plain nets train worse, deeper ResNets better; an ensemble
    beats its best member) where the runs speak to them.

    Everything is written to --out and logged as artifacts under report/ of the sweep's parent
    run, or for a list of runs of a new run tagged orch.kind=report.
    """
    from orchestrator.report import build_report
    from orchestrator.report.text import report_text
    from orchestrator.tracking import quiet_mlflow, tracking_uri

    quiet_mlflow()
    outcome = build_report(tracking_uri(explicit=uri), runs, out_dir)
    if output == "json":
        click.echo(json.dumps(outcome, default=str))
        return
    click.echo(report_text(outcome))
    for path in outcome["figures"]:
        click.echo(f"figure: {path}")
    click.echo(f"html: {outcome['html']}")
    click.echo(f"logged under report/ of MLflow run {outcome['run_id']}")
