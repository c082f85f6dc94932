"""`orch report`: a sweep's (or a list of runs') results as the paper shows them.
May import: runs, sweep (records: which runs are a sweep's trials).

    build_report(uri, "PARENT_RUN_ID")            # a sweep: its FINISHED trial runs
    build_report(uri, "RUN1,RUN2,ENSEMBLE_RUN")   # training runs, and ensemble runs

One module per concern: collect (the runs), configs (architecture, dataset, grouping), table
(statistics per configuration), paper (the paper's numbers and what compares), verdicts (the
paper's findings against the rows), figures (Fig. 4/6-style curves), text and html_page (the
report as text, Markdown and one HTML page), publish (files and MLflow artifacts; a sweep
parent's description and summary metrics).
"""

from pathlib import Path

from orchestrator.report import html_page, paper, publish
from orchestrator.report.collect import Collected, collect
from orchestrator.report.figures import plot_curves
from orchestrator.report.table import build_rows
from orchestrator.report.verdicts import verdicts
from orchestrator.tags import REPORT_WARNING_TAG

__all__ = ["build_report", "collect", "build_rows", "verdicts", "plot_curves"]


def build_report(uri: str, refs, out_dir: str | Path | None = None) -> dict:
    """Collect, tabulate, compare, judge, draw; write the files into `out_dir` (default
    ./reports/<run id>) and log them to the sweep's parent run (a list of runs: a new report
    run) under report/; a sweep's parent also gets the result in its description and summary
    metrics. Returns {rows, figures, verdicts, run_id, html, skipped}."""
    collected = collect(uri, refs)
    rows = build_rows(collected.trained)
    for row in rows:
        row["paper"] = paper.compare(row)
    found = verdicts(rows, collected.ensembles)
    run_id = collected.sweep_id or publish.create_report_run(uri, collected.experiment_id, _listed(collected))
    try:
        report = _write(uri, run_id, collected, rows, found, Path(out_dir or Path("reports") / run_id).resolve())
    except BaseException:
        if not collected.sweep_id:
            publish.end_report_run(uri, run_id, ok=False)
        raise
    if not collected.sweep_id:
        publish.end_report_run(uri, run_id, ok=True)
    return report


def _write(uri: str, run_id: str, collected: Collected, rows: list, found: list, out: Path) -> dict:
    figures = plot_curves(rows, out)
    report = {
        "rows": rows,
        "figures": [str(path) for path in figures],
        "verdicts": found,
        "run_id": run_id,
        "html": str(out / "report.html"),
        "skipped": collected.skipped,
    }
    html = html_page.render(report, figures, _title(collected))
    files = publish.write_files(out, report, html)
    publish.log_files(uri, run_id, figures + files)
    if collected.sweep_id:
        publish.describe_sweep(uri, run_id, report)
    return report


def _listed(collected: Collected) -> list[str]:
    runs = [r.run_id for r in collected.trained] + [r.info.run_id for r in collected.ensembles]
    return runs + [s["run_id"] for s in collected.skipped]


def _title(collected: Collected) -> str:
    if collected.sweep_id:
        return f"orch report: sweep {collected.sweep_id}"
    return f"orch report: {len(collected.refs)} runs"


def report_sweep_end(uri: str, parent_id: str) -> str | None:
    """At a sweep's end, its report logged to the parent as `orch report PARENT` logs it (the
    files through a temporary folder). A report that cannot be made (no finished trial, a
    run without history) never fails the sweep: the reason is returned and recorded in the
    parent's tag orch.report_warning."""
    import tempfile

    from mlflow.tracking import MlflowClient

    try:
        with tempfile.TemporaryDirectory(prefix="orch-report-") as tmp:
            build_report(uri, parent_id, tmp)
        return None
    except Exception as exc:  # the report is a courtesy at this point; the sweep's runs are the record
        reason = f"no report: {type(exc).__name__}: {exc}"
        MlflowClient(uri).set_tag(parent_id, REPORT_WARNING_TAG, reason[:5000])
        return reason
