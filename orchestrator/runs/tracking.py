"""A job's MLflow run: the store it lives in, creating it (tags, the spec as params and as an
artifact), tagging and ending it, and reading its epoch metrics back.

One run per job, created by the driver before anything trains; the Ray Train controller logs
the epochs into it (orchestrator.train.epoch_logger); it always ends FINISHED, FAILED or KILLED.
What a run records, from here: params (the resolved spec, flattened) and spec.json; the epoch
metrics (EPOCH_METRICS) and best_* (log_best, by orchestrator/recovery/best.py's rule); its tags,
one key a line in orchestrator/tags.py; dataset inputs, description and logged model
(orchestrator/runs/run_record.py, model_logging.py); system metrics (orchestrator/runs/telemetry.py);
step metrics (orchestrator/train/step_metrics.py); preemptions and failures
(orchestrator/train/interruptions.py).
"""

import json
import logging
import os
import subprocess
import time
from importlib import metadata
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from orchestrator.recovery.best import BestRule
from orchestrator.spec import JobSpec, flatten
from orchestrator.tags import ERROR_TAG, SPEC_FILE_TAG

EPOCH_METRICS = (
    "train_loss",
    "train_top1_error",  # on the batches as trained (augmented, train mode): the paper's thin curves
    "train_top5_error",
    "lr",
    "train_images_per_second",
    "epoch_seconds",
    "data_wait_fraction",  # share of the epoch the slowest rank waited for its loader
    "val_loss",
    "val_top1_error",
    "val_top5_error",
    "val_samples",
)
BEST_METRICS = ("val_top1_error", "val_top5_error")
# What MLflow 3's UI reads to show an experiment as model training (runs, metrics, models).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def tracking_uri(spec: JobSpec | None = None, explicit: str | None = None) -> str:
    """`explicit`, else the spec's URI, else $MLFLOW_TRACKING_URI, else ./mlflow.db (MLflow's own
    default), made absolute."""
    uri = explicit or (spec.tracking.tracking_uri if spec else None)
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + os.path.abspath(uri[len("sqlite:///") :])
    elif "://" not in uri:
        uri = os.path.abspath(uri)
    return uri


def open_store(uri: str) -> None:
    """Open the store at `uri` once, so that creating the run takes no longer than that (a new
    sqlite file gets its tables, seconds); a store that does not answer is left for start_run to
    report."""
    quiet_mlflow()
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception:
        pass


def start_run(spec: JobSpec, spec_path: str | None, uri: str) -> str:
    """Create the job's run: tags, the flattened spec as params, the spec as an artifact."""
    quiet_mlflow()
    client = MlflowClient(uri)
    run = client.create_run(
        experiment_id(client, spec.experiment), run_name=spec.tracking.run_name or spec.name, tags=_tags(spec_path)
    )
    run_id = run.info.run_id
    params = [Param(k, _param_value(v)) for k, v in flatten(spec.model_dump(mode="json")).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])
    client.log_dict(run_id, spec.model_dump(mode="json"), "spec.json")
    return run_id


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment `name`, created if there is none, marked as model training
    (mark_model_training): every experiment orch creates or writes runs into comes from here."""
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name, tags=dict([EXPERIMENT_KIND]))
    mark_model_training(client, found)
    return found.experiment_id


def mark_model_training(client: MlflowClient, experiment) -> None:
    """Tag `experiment` mlflow.experimentKind=custom_model_development, the kind MLflow 3's UI
    opens on its training views for (on GenAI's traces otherwise), unless it has a kind someone
    chose: a missing one or one the UI only inferred is replaced."""
    key, value = EXPERIMENT_KIND
    kind = experiment.tags.get(key)
    if kind is None or kind.endswith("_inferred") or kind == "no_inferred_type":
        client.set_experiment_tag(experiment.experiment_id, key, value)


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
        client.set_tag(run_id, ERROR_TAG, error[:5000])
    client.set_terminated(run_id, status=status)


def end_if_running(uri: str, run_id: str, status: str, error) -> bool:
    """End the run with `status` if whatever was to end it did not (a job that could not start,
    a pod that died first): never leave a run RUNNING. `error` is the cause, or a function that
    finds it. True if it had to."""
    if MlflowClient(uri).get_run(run_id).info.status != "RUNNING":
        return False
    end_run(uri, run_id, status, error() if callable(error) else error)
    return True


def set_tags(uri: str, run_id: str, tags: dict) -> None:
    client = MlflowClient(uri)
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def epoch_history(uri: str, run_id: str, key: str = "val_top1_error") -> dict[int, float]:
    """{epoch: value} for a metric, as logged."""
    return {m.step: m.value for m in MlflowClient(uri).get_metric_history(run_id, key)}


def log_best(uri: str, run_id: str, rule: BestRule) -> dict:
    """Log best_epoch and best_<metric> for the error metrics, read at the epoch the run's rule
    chooses (orchestrator/recovery/best.py), and return them."""
    best = best_metrics(uri, run_id, rule)
    if best:
        MlflowClient(uri).log_batch(run_id, metrics=[Metric(k, v, now_ms(), 0) for k, v in best.items()])
    return best


def best_metrics(uri: str, run_id: str, rule: BestRule) -> dict:
    """{best_epoch, best_val_top1_error, best_val_top5_error} at the rule's best epoch so far;
    {} before the first epoch is logged."""
    history = {key: epoch_history(uri, run_id, key) for key in dict.fromkeys((rule.metric, *BEST_METRICS))}
    epoch = rule.best_epoch(history[rule.metric])
    if epoch is None:
        return {}
    best = {"best_epoch": float(epoch)}
    for key in BEST_METRICS:
        if epoch in history[key]:
            best[f"best_{key}"] = history[key][epoch]
    return best


def _tags(spec_path: str | None) -> dict:
    tags = {f"version.{pkg}": _version(pkg) for pkg in ("torch", "ray", "ffcv", "mlflow")}
    tags[SPEC_FILE_TAG] = os.path.abspath(spec_path) if spec_path else "(none)"
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
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _param_value(value) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]


def now_ms() -> int:
    return int(time.time() * 1000)
