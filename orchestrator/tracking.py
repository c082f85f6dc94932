"""MLflow: one run per job, created by the driver; epoch metrics logged by the Ray Train
controller once per report (never per rank); the run always ends FINISHED, FAILED or KILLED."""

import json
import logging
import os
import subprocess
import time
from importlib import metadata
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from ray.train import UserCallback

from orchestrator.spec import JobSpec, flatten

EPOCH_METRICS = (
    "train_loss", "lr", "train_images_per_second", "epoch_seconds",
    "val_loss", "val_top1_error", "val_top5_error", "val_samples",
)
BEST_METRICS = ("val_top1_error", "val_top5_error")


def tracking_uri(spec: JobSpec) -> str:
    """The spec's URI, else $MLFLOW_TRACKING_URI, else ./mlflow.db (MLflow's own default), made absolute."""
    uri = spec.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    elif "://" not in uri:
        uri = os.path.abspath(uri)
    return uri


def start_run(spec: JobSpec, spec_path: str | None, uri: str) -> str:
    """Create the job's run: tags, the flattened spec as params, the spec as an artifact."""
    quiet_mlflow()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(spec.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(spec.experiment)
    run = client.create_run(experiment_id, run_name=spec.tracking.run_name or spec.name, tags=_tags(spec_path))
    run_id = run.info.run_id
    params = [Param(k, _param_value(v)) for k, v in flatten(spec.model_dump(mode="json")).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])
    client.log_dict(run_id, spec.model_dump(mode="json"), "spec.json")
    return run_id


def quiet_mlflow() -> None:
    """MLflow's INFO lines (creating the sqlite tables, system metrics start/stop) are noise to a user."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def end_run(uri: str, run_id: str, status: str, error: str | None = None) -> None:
    client = MlflowClient(uri)
    if error:
        client.set_tag(run_id, "orch.error", error[:5000])
    client.set_terminated(run_id, status=status)


def set_tags(uri: str, run_id: str, tags: dict) -> None:
    client = MlflowClient(uri)
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def epoch_history(uri: str, run_id: str, key: str = "val_top1_error") -> dict[int, float]:
    """{epoch: value} for a metric, as logged."""
    return {m.step: m.value for m in MlflowClient(uri).get_metric_history(run_id, key)}


def log_best(uri: str, run_id: str, mode: str = "min") -> dict:
    """Log best_<metric> for the error metrics and return them."""
    client = MlflowClient(uri)
    best = {}
    for key in BEST_METRICS:
        values = [m.value for m in client.get_metric_history(run_id, key)]
        if values:
            best[f"best_{key}"] = min(values) if mode == "min" else max(values)
    if best:
        client.log_batch(run_id, metrics=[Metric(k, v, _now_ms(), 0) for k, v in best.items()])
    return best


class EpochLogger(UserCallback):
    """Runs on the Ray Train controller after every `ray.train.report`.

    Logs rank 0's (already globally reduced) metrics with step = epoch. An epoch is logged
    at most once, even when a restarted worker group reports it again.
    """

    def __init__(self, uri: str, run_id: str):
        self.uri = uri
        self.run_id = run_id
        self._logged: set[int] | None = None

    def after_report(self, run_context, metrics, checkpoint):
        client = MlflowClient(self.uri)
        if self._logged is None:
            self._logged = set(epoch_history(self.uri, self.run_id).keys())
            client.set_tag(self.run_id, "ray.train_run_id", run_context.run_id)
        report = metrics[0]
        epoch = int(report["epoch"])
        if checkpoint is not None:
            client.set_tag(self.run_id, "orch.latest_checkpoint", checkpoint.path)
        if epoch in self._logged:
            return
        values = [Metric(k, float(report[k]), _now_ms(), epoch) for k in EPOCH_METRICS if k in report]
        client.log_batch(self.run_id, metrics=values)
        client.set_tag(self.run_id, "orch.epoch", str(epoch))
        self._logged.add(epoch)


def _tags(spec_path: str | None) -> dict:
    tags = {f"version.{pkg}": _version(pkg) for pkg in ("torch", "ray", "ffcv", "mlflow")}
    tags["orch.spec_file"] = os.path.abspath(spec_path) if spec_path else "(none)"
    commit = _git_commit(Path(spec_path).parent if spec_path else Path.cwd())
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit(where: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _param_value(value) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]


def _now_ms() -> int:
    return int(time.time() * 1000)
