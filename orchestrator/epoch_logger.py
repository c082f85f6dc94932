"""The Ray Train controller's callback: logs each epoch into the job's MLflow run exactly once,
and counts the worker-group failures Ray Train retries.

It runs on the controller (never on a rank), after every `ray.train.report` and worker failure.
"""

import json
import logging

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from ray.train import UserCallback

from orchestrator import ray_internals
from orchestrator.tracking import EPOCH_METRICS, epoch_history, now_ms

logger = logging.getLogger(__name__)


class EpochLogger(UserCallback):
    """Runs on the Ray Train controller after every `ray.train.report` and worker failure.

    Logs rank 0's (already globally reduced) metrics with step = epoch. An epoch is logged
    at most once, even when a restarted worker group, or a resumed run, reports it again; a
    step checkpoint's report logs none (tag orch.step_checkpoint names the checkpoint).
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
        if report.get("restored_from"):
            client.set_tag(self.run_id, "orch.restored_from", str(report["restored_from"])[:5000])
        workers = worker_placement(metrics)
        if workers:
            client.set_tag(self.run_id, "workers", json.dumps(workers))
        if report.get("report") == "step":  # a step checkpoint's or a stop's: no epoch to log
            if checkpoint is not None:
                client.set_tag(self.run_id, "orch.step_checkpoint", checkpoint.path)
            return
        if epoch in self._logged:
            return
        values = [Metric(k, float(report[k]), now_ms(), epoch) for k in EPOCH_METRICS if k in report]
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
        client.log_metric(self.run_id, "restarts", restarts, now_ms(), restarts)


def worker_placement(reports: list[dict]) -> list[dict] | None:
    """[{rank, hostname, node_id}, ...] when every rank's report says where it runs (the first
    report of each worker group), else None."""
    if not reports or not all("worker_node_id" in r for r in reports):
        return None
    workers = [
        {"rank": int(r["worker_rank"]), "hostname": r["worker_hostname"], "node_id": r["worker_node_id"]}
        for r in reports
    ]
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
            detail = detail[detail.index("Worker exit detail:") :].split(". ")[0]
        text += f" ({type(inner).__name__}: {detail})" if detail else f" ({type(inner).__name__})"
    return text


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _preempted(error: BaseException) -> bool:
    """Ray charges preemptions to their own (unlimited by default) budget, not max_failures."""
    try:
        return ray_internals.is_preempted(error)
    except ray_internals.RayInternalChanged as exc:
        logger.warning("%s; counting the failure against training.max_failures", exc)
        return False
