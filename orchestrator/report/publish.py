"""Where a report goes: its files in a folder, and the same files as MLflow artifacts under
report/ of the sweep's parent run, or, for a list of runs, of a new run of its own.

MLflow takes artifacts into a run whatever its status (MlflowClient.log_artifact does not touch
it), so a FINISHED or KILLED sweep parent keeps its status. A report run is created RUNNING in
the experiment of the first listed run, tagged orch.kind=report and orch.report.runs (the ids),
and ends FINISHED once its files are logged (FAILED if that fails).
"""

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestrator.report import paper, text

ARTIFACT_PATH = "report"


def create_report_run(uri: str, experiment_id: str, run_ids: list[str]) -> str:
    client = MlflowClient(uri)
    tags = {"orch.kind": "report", "orch.report.runs": ",".join(run_ids)[:5000]}
    return client.create_run(experiment_id, run_name=f"report-{len(run_ids)}-runs", tags=tags).info.run_id


def end_report_run(uri: str, run_id: str, ok: bool) -> None:
    MlflowClient(uri).set_terminated(run_id, status="FINISHED" if ok else "FAILED")


def write_files(out_dir: Path, report: dict, html: str) -> list[Path]:
    """report.json (the report and the paper's numbers), report.txt, report.md, report.html."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "report.json": json.dumps(dict(report, paper=paper.as_dicts()), indent=2, default=str),
        "report.txt": text.report_text(report) + "\n",
        "report.md": text.markdown(report["rows"]) + "\n\n" + _markdown_notes(report),
        "report.html": html,
    }
    for name, content in files.items():
        (out_dir / name).write_text(content, encoding="utf-8")
    return [out_dir / name for name in files]


def _markdown_notes(report: dict) -> str:
    lines = []
    for title, items in (
        ("Against the paper", text.paper_notes(report["rows"])),
        ("Verdicts", text.verdict_lines(report["verdicts"])),
        ("Skipped", text.skipped_lines(report["skipped"])),
    ):
        if items:
            lines += [f"### {title}", *(f"- {item}" for item in items), ""]
    return "\n".join(lines)


def log_files(uri: str, run_id: str, paths: list[Path]) -> None:
    client = MlflowClient(uri)
    for path in paths:
        client.log_artifact(run_id, str(path), ARTIFACT_PATH)
