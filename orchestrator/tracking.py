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


def tracking_uri(spec: JobSpec | None = None, explicit: str | None = None) -> str:
    """`explicit`, else the spec's URI, else $MLFLOW_TRACKING_URI, else ./mlflow.db (MLflow's own
    default), made absolute."""
    uri = explicit or (spec.tracking.tracking_uri if spec else None)
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
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
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # spec.json's download bar
    # "View run ... at: http://..." on stdout whenever a run on a server ends: it would break
    # `--output json`, whose stdout is one JSON object.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


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
    """Runs on the Ray Train controller after every `ray.train.report` and worker failure.

    Logs rank 0's (already globally reduced) metrics with step = epoch. An epoch is logged
    at most once, even when a restarted worker group, or a resumed run, reports it again.
    Each worker-group failure that Ray Train will retry is counted in the tag orch.restarts,
    its cause in orch.last_restart_cause. The tag `workers` says where each rank of the
    latest worker group runs (rank, hostname, Ray node id).
    """

    def __init__(self, uri: str, run_id: str, max_failures: int = 0):
        self.uri = uri
        self.run_id = run_id
        self.max_failures = max_failures
        self._logged: set[int] | None = None
        self._failures = 0

    def after_report(self, run_context, metrics, checkpoint):
        client = MlflowClient(self.uri)
        if self._logged is None:
            self._logged = set(epoch_history(self.uri, self.run_id).keys())
            client.set_tag(self.run_id, "ray.train_run_id", run_context.run_id)
        report = metrics[0]
        epoch = int(report["epoch"])
        if checkpoint is not None:
            client.set_tag(self.run_id, "orch.latest_checkpoint", checkpoint.path)
        for key in ("restored_from", "restore_warning"):
            if report.get(key):
                client.set_tag(self.run_id, f"orch.{key}", str(report[key])[:5000])
        workers = worker_placement(metrics)
        if workers:
            client.set_tag(self.run_id, "workers", json.dumps(workers))
        if epoch in self._logged:
            return
        values = [Metric(k, float(report[k]), _now_ms(), epoch) for k in EPOCH_METRICS if k in report]
        client.log_batch(self.run_id, metrics=values)
        client.set_tag(self.run_id, "orch.epoch", str(epoch))
        self._logged.add(epoch)

    def after_exception(self, run_context, worker_exceptions):
        preempted = any(_preempted(e) for e in worker_exceptions.values())
        if not preempted:
            self._failures += 1
            if self.max_failures != -1 and self._failures > self.max_failures:
                return  # Ray Train gives up: the driver records the run FAILED with this cause
        client = MlflowClient(self.uri)
        run = client.get_run(self.run_id)
        restarts = int(run.data.tags.get("orch.restarts", "0")) + 1
        rank, error = min(worker_exceptions.items())
        cause = f"{'preempted: ' if preempted else ''}rank {rank}: {failure_summary(error)}"
        client.set_tag(self.run_id, "orch.restarts", str(restarts))
        client.set_tag(self.run_id, "orch.last_restart_cause", cause[:5000])
        client.log_metric(self.run_id, "restarts", restarts, _now_ms(), restarts)


def worker_placement(reports: list[dict]) -> list[dict] | None:
    """[{rank, hostname, node_id}, ...] when every rank's report says where it runs (the first
    report of each worker group), else None."""
    if not reports or not all("worker_node_id" in r for r in reports):
        return None
    workers = [{"rank": int(r["worker_rank"]), "hostname": r["worker_hostname"], "node_id": r["worker_node_id"]}
               for r in reports]
    return sorted(workers, key=lambda w: w["rank"])


def failure_summary(error: BaseException) -> str:
    """The first line of a worker's error, plus its underlying cause's gist when it wraps one
    (a dead worker surfaces as a failed health check wrapping the actor's death)."""
    text = _first_line(error)
    inner = getattr(error, "health_check_failure", None) or error.__cause__
    if inner is not None:
        lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
        detail = next((line for line in lines if "exit detail" in line.lower()), lines[0] if lines else "")
        if "Worker exit detail:" in detail:  # Ray's one-line essay on possible causes: keep the fact
            detail = detail[detail.index("Worker exit detail:"):].split(". ")[0]
        text += f" ({type(inner).__name__}: {detail})" if detail else f" ({type(inner).__name__})"
    return text


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _preempted(error: BaseException) -> bool:
    """Ray charges preemptions to their own (unlimited by default) budget, not max_failures."""
    try:
        from ray.train.v2._internal.execution.worker_group.poll import _is_preempted_actor
    except ImportError:
        return False
    return bool(_is_preempted_actor(error))


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
