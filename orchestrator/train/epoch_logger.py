"""The Ray Train controller's callback that logs each epoch into the job's MLflow run exactly once.

It runs on the controller (never on a rank), after every `ray.train.report`. What interrupts a
run (preemptions, failures) is recorded beside it by orchestrator/train/interruptions.py. MLflow is
imported at the first report, not when the controller unpickles its callbacks: the controller
starts before the workers, and its imports would hold them up.
"""

import json

from ray.train import UserCallback

from orchestrator.tags import EPOCH_TAG, LATEST_CHECKPOINT_TAG, RESTORED_FROM_TAG, STEP_CHECKPOINT_TAG, WORKERS_TAG


class EpochLogger(UserCallback):
    """Runs on the Ray Train controller after every `ray.train.report`.

    Logs rank 0's (already globally reduced) metrics with step = epoch. An epoch is logged
    at most once, even when a restarted worker group, or a resumed run, reports it again; a
    step checkpoint's report logs none (tag orch.step_checkpoint names the checkpoint). The
    tag `workers` says where each rank of the latest worker group runs (rank, hostname, Ray
    node id).
    """

    def __init__(self, uri: str, run_id: str):
        self.uri = uri
        self.run_id = run_id
        self._logged: set[int] | None = None

    def after_report(self, run_context, metrics, checkpoint):
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        from orchestrator.runs.tracking import EPOCH_METRICS, epoch_history, now_ms

        client = MlflowClient(self.uri)
        if self._logged is None:
            self._logged = set(epoch_history(self.uri, self.run_id).keys())
            client.set_tag(self.run_id, "ray.train_run_id", run_context.run_id)
        report = metrics[0]
        epoch = int(report["epoch"])
        if checkpoint is not None:
            client.set_tag(self.run_id, LATEST_CHECKPOINT_TAG, checkpoint.path)
        if report.get("restored_from"):
            client.set_tag(self.run_id, RESTORED_FROM_TAG, str(report["restored_from"])[:5000])
        workers = worker_placement(metrics)
        if workers:
            client.set_tag(self.run_id, WORKERS_TAG, json.dumps(workers))
        if report.get("report") == "step":  # a step checkpoint's or a stop's: no epoch to log
            if checkpoint is not None:
                client.set_tag(self.run_id, STEP_CHECKPOINT_TAG, checkpoint.path)
            return
        if epoch in self._logged:
            return
        values = [Metric(k, float(report[k]), now_ms(), epoch) for k in EPOCH_METRICS if k in report]
        client.log_batch(self.run_id, metrics=values)
        client.set_tag(self.run_id, EPOCH_TAG, str(epoch))
        self._logged.add(epoch)


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
