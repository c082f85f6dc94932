"""`orch report RUN_OR_PARENT[,...]`: a sweep's or some runs' results as the paper shows them."""

import click

from orchestrator.cli.options import emit_json, output_option, uri_option


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

    RUN_OR_PARENT is a sweep's parent run (its trials as the sweep counts them: FINISHED ones
    reported, ASHA-stopped and unfinished ones listed as skipped) or comma-separated run ids or
    names: training runs, and `orch ensemble` runs. Runs are grouped into configurations (what a
    trial varied, seed aside); each row gives the final validation and training errors (the
    last epoch's) as mean ± std over seeds, the paper's number beside them (with its own
    statistic: best of 5 and mean for ResNet-110, one run otherwise), marked not comparable,
    with every reason, where the data, the recipe, the shortcut or the test protocol differ;
    and, under a label that says so, each run's best epoch chosen on the set it reports. The
    curves are drawn as the paper's Fig. 4 and 6. The verdicts are Welch t-tests on the seeds'
    final training errors (deeper plain nets train worse, deeper ResNets better, a ResNet better
    than the plain net of its depth; p < 0.05, else undecided) and an ensemble against its best
    member.

    Everything is written to --out and logged as artifacts under report/ of the sweep's parent
    run (whose description and summary metrics then show the result in the MLflow UI), or for
    a list of runs of a new run tagged orch.kind=report.
    """
    from orchestrator.report import build_report
    from orchestrator.report.text import report_text
    from orchestrator.runs.tracking import quiet_mlflow, tracking_uri

    quiet_mlflow()
    outcome = build_report(tracking_uri(explicit=uri), runs, out_dir)
    if output == "json":
        emit_json(outcome, default=str)
        return
    click.echo(report_text(outcome))
    for path in outcome["figures"]:
        click.echo(f"figure: {path}")
    click.echo(f"html: {outcome['html']}")
    click.echo(f"logged under report/ of MLflow run {outcome['run_id']}")
