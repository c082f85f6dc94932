"""Where a report goes: its files in a folder, and the same files as MLflow artifacts under
report/ of the sweep's parent run, or, for a list of runs, of a new run of its own.

A sweep's parent also shows the result where the MLflow UI shows a run: its description
(mlflow.note.content, Markdown) gets a "#### Result" section with the table, the comparison with
the paper, the verdicts and the skipped runs (replaced by a later report), and it logs summary
metrics the runs table can sort sweeps by: per configuration the mean final errors
(final_val_top1_error/<configuration>, final_val_top5_error/..., final_train_top1_error/...), and
the best trial's (best_trial/final_val_top1_error, best_trial/final_train_top1_error; the lowest
final val top-1 error, its run in the tag orch.sweep.best_trial).

MLflow takes artifacts, tags and metrics into a run whatever its status, so a FINISHED or KILLED
sweep parent keeps its status. A report run is created RUNNING in the experiment of the first
listed run, tagged orch.kind=report and orch.report.runs (the ids), and ends FINISHED once its
files are logged (FAILED if that fails).
"""

import json
import re
import time
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from orchestrator.report import paper, text
from orchestrator.tags import BEST_TRIAL_TAG, KIND_TAG, REPORT, REPORT_RUNS_TAG

ARTIFACT_PATH = "report"
RESULT_HEADING = "#### Result"  # as a training run's description has it (orchestrator/runs/run_record.py)


def create_report_run(uri: str, experiment_id: str, run_ids: list[str]) -> str:
    client = MlflowClient(uri)
    tags = {KIND_TAG: REPORT, REPORT_RUNS_TAG: ",".join(run_ids)[:5000]}
    return client.create_run(experiment_id, run_name=f"report-{len(run_ids)}-runs", tags=tags).info.run_id


def end_report_run(uri: str, run_id: str, ok: bool) -> None:
    MlflowClient(uri).set_terminated(run_id, status="FINISHED" if ok else "FAILED")


def write_files(out_dir: Path, report: dict, html: str) -> list[Path]:
    """report.json (the report and the paper's numbers), report.txt, report.md, report.html."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "report.json": json.dumps(dict(report, paper=paper.as_dicts()), indent=2, default=str),
        "report.txt": text.report_text(report) + "\n",
        "report.md": markdown(report),
        "report.html": html,
    }
    for name, content in files.items():
        (out_dir / name).write_text(content, encoding="utf-8")
    return [out_dir / name for name in files]


def markdown(report: dict) -> str:
    """report.md: the table, then the comparison with the paper, the verdicts, the skipped runs."""
    return text.markdown(report["rows"]) + "\n\n" + _markdown_notes(report)


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


def describe_sweep(uri: str, parent_id: str, report: dict) -> None:
    """The parent's description gets the report (Markdown) as its result; the summary metrics
    are logged on the parent."""
    client = MlflowClient(uri)
    note = client.get_run(parent_id).data.tags.get(MLFLOW_RUN_NOTE, "").split(RESULT_HEADING)[0].rstrip()
    result = f"{RESULT_HEADING}\n\n{markdown(report).rstrip()}\n\nThe whole report: artifacts `report/` (report.html)."
    described = f"{note}\n\n{result}".lstrip()
    if len(described) > MAX_TAG_VAL_LENGTH:
        cut = "\n\n(cut here: MLflow keeps 8,000 characters; the whole report is report/report.md)"
        described = described[: MAX_TAG_VAL_LENGTH - len(cut)] + cut
    client.set_tag(parent_id, MLFLOW_RUN_NOTE, described)
    metrics, best = summary_metrics(report["rows"])
    client.log_batch(parent_id, metrics=metrics)
    if best:
        client.set_tag(parent_id, BEST_TRIAL_TAG, best)


def summary_metrics(rows: list[dict]) -> tuple[list[Metric], str | None]:
    """Each configuration's mean final errors and the best trial's, and the best trial's run."""
    now, found, trials = int(time.time() * 1000), {}, []
    for row in rows:
        name = metric_label(row)
        for key in ("final_val_top1_error", "final_val_top5_error", "final_train_top1_error"):
            if row[key]["mean"] is not None:
                found[f"{key}/{name}"] = row[key]["mean"]
        val, train = row["final_val_top1_error"]["values"], row["final_train_top1_error"]["values"]
        if len(val) == len(train) == len(row["run_ids"]):
            trials += [(v, t, run_id, row["label"]) for v, t, run_id in zip(val, train, row["run_ids"])]
    best = None
    if trials:
        val, train, run_id, label = min(trials)
        found.update({"best_trial/final_val_top1_error": val, "best_trial/final_train_top1_error": train})
        best = f"{run_id} ({label})"
    return [Metric(key, float(v), now, 0) for key, v in found.items()], best


def metric_label(row: dict) -> str:
    """A configuration as a metric name's part: 'plain-56', 'ResNet-34 shortcut=B' -> 'ResNet-34 shortcut-B'."""
    extra = {k: v for k, v in _flat(row["config"]).items() if k != "model.arch"}
    label = row["name"] + "".join(f" {key.split('.')[-1]}={value}" for key, value in extra.items())
    return re.sub(r"[^\w.\- ]+", "-", label).strip("-") or "configuration"


def _flat(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
