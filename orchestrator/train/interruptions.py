"""What interrupted a run's training, recorded on its MLflow run as Ray Train decides it (MLflow
imported when there is something to record: the controller unpickles this at its start).

`InterruptionRecorder` runs on the Ray Train controller. It sees each state change there: a
preemption notice (PreemptingState: the drained nodes, the ranks on them, the deadline), then
the restart Ray charges to its preemption budget (training.max_preemption_failures), or a
worker-group failure charged to training.max_failures; and, before each new worker group
starts, the checkpoint Ray hands it. The run's tags then say

    orch.preemptions      how many preemptions the run went through
    orch.preemption_log   the latest ones as JSON: when noticed, nodes, ranks, deadline, when
                          Ray restarted, the checkpoint the next worker group continued from
    orch.failures         worker-group failures (orch.last_failure: the latest's cause)
    orch.restarts         restarts of either kind (orch.last_restart_cause: the latest's)

and the metrics `preemptions` and `restarts` count them with their number as the step.
"""

import json
import logging
import time

from orchestrator import ray_internals
from orchestrator.tags import (
    FAILURES_TAG,
    LAST_FAILURE_TAG,
    LAST_RESTART_CAUSE_TAG,
    PREEMPTION_LOG_TAG,
    PREEMPTIONS_TAG,
    RESTARTS_TAG,
)

logger = logging.getLogger(__name__)
KEPT_PREEMPTIONS = 10  # the log's length: a tag holds a few thousand characters
ENDED_WITH_ERROR = ("RestartingState", "ReschedulingState", "ErroredState")


def recorder(uri: str, run_id: str):
    """The controller-side callback for a trainer of run `run_id` (tracked in `uri`); put it after
    orchestrator.recovery.restart's keeper, which decides the checkpoint a new worker group gets."""
    group_callback, _ = ray_internals.callback_bases()
    controller_callback = ray_internals.controller_callback_base()

    class InterruptionRecorder(controller_callback, group_callback):
        def __init__(self):
            self.notice = None  # the preemption being waited out
            self.continuing = None  # the preemption whose next worker group is about to start

        def after_controller_state_update(self, previous_state, current_state):
            name = ray_internals.state_name(current_state)
            if name == "PreemptingState" and self.notice is None:
                self.notice = {"noticed": _now(), **(ray_internals.state_preemption(current_state) or {})}
            error = ray_internals.state_error(current_state)
            if error is None or name not in ENDED_WITH_ERROR:
                return
            restarted = name != "ErroredState"
            if ray_internals.is_preemption_failure(error):
                self.continuing = record_preemption(uri, run_id, self.notice or _notice_of(error), restarted)
            else:
                record_failure(uri, run_id, error, restarted)
            self.notice = None

        def before_init_train_context(self, workers):
            if self.continuing is not None:
                latest = ray_internals.latest_recorded(ray_internals.controller_checkpoint_manager())
                note_continuation(uri, run_id, self.continuing, latest.path if latest else None)
                self.continuing = None
            return {}

    return InterruptionRecorder()


def record_preemption(uri: str, run_id: str, notice: dict, restarted: bool) -> int:
    """Count a preemption and log it; returns its number."""
    from mlflow.tracking import MlflowClient

    from orchestrator.runs.tracking import now_ms

    client = MlflowClient(uri)
    tags = client.get_run(run_id).data.tags
    log = json.loads(tags.get(PREEMPTION_LOG_TAG, "[]"))
    number = int(tags.get(PREEMPTIONS_TAG, "0")) + 1
    entry = {"n": number, **notice, ("restarted" if restarted else "gave_up"): _now()}
    log = (log + [entry])[-KEPT_PREEMPTIONS:]
    cause = f"preemption {number} of nodes {', '.join(n[:12] for n in notice.get('nodes', [])) or '?'}"
    _write(
        client,
        run_id,
        tags,
        {PREEMPTIONS_TAG: str(number), PREEMPTION_LOG_TAG: json.dumps(log)},
        cause if restarted else None,
    )
    client.log_metric(run_id, "preemptions", number, now_ms(), number)
    logger.warning("run %s: %s (ranks %s)", run_id, cause, notice.get("ranks"))
    return number


def record_failure(uri: str, run_id: str, error: BaseException, restarted: bool) -> None:
    """Count a worker-group failure charged to training.max_failures, with its cause."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    tags = client.get_run(run_id).data.tags
    failures = int(tags.get(FAILURES_TAG, "0")) + 1
    cause = _worker_cause(error)
    _write(
        client,
        run_id,
        tags,
        {FAILURES_TAG: str(failures), LAST_FAILURE_TAG: cause[:5000]},
        cause if restarted else None,
    )
    logger.warning("run %s: failure %d: %s", run_id, failures, failure_summary(error))


def note_continuation(uri: str, run_id: str, number: int, location: str | None) -> None:
    """Add to preemption `number`'s entry the checkpoint the next worker group continues from."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    log = json.loads(client.get_run(run_id).data.tags.get(PREEMPTION_LOG_TAG, "[]"))
    for entry in log:
        if entry.get("n") == number:
            entry["continued_from"] = location or "the start (no checkpoint yet)"
    client.set_tag(run_id, PREEMPTION_LOG_TAG, json.dumps(log))


def preemption_lines(log: list[dict]) -> list[str]:
    """One line per entry of a run's orch.preemption_log, as `orch status` and the run's
    description show them."""
    lines = []
    for entry in log:
        nodes = ", ".join(node[:12] for node in entry.get("nodes", [])) or "?"
        deadline = entry.get("deadline_ms")
        at = time.strftime("%H:%M:%S", time.localtime(deadline / 1000)) if deadline else "none"
        then = f"continued from {entry['continued_from']}" if entry.get("continued_from") else "not restarted"
        lines.append(
            f"preemption {entry['n']}: noticed {entry.get('noticed', '?')}, nodes {nodes} (ranks "
            f"{entry.get('ranks', '?')}), deadline {at}; {then}"
        )
    return lines


def _write(client, run_id: str, tags: dict, updates: dict, restart_cause: str | None) -> None:
    """Set `updates`, and with a restart's cause count the restart (tags and the metric)."""
    from orchestrator.runs.tracking import now_ms

    if restart_cause is not None:
        restarts = int(tags.get(RESTARTS_TAG, "0")) + 1
        updates = {**updates, RESTARTS_TAG: str(restarts), LAST_RESTART_CAUSE_TAG: restart_cause[:5000]}
        client.log_metric(run_id, "restarts", restarts, now_ms(), restarts)
    for key, value in updates.items():
        client.set_tag(run_id, key, value)


def _notice_of(error) -> dict:
    """The notice carried by a PreemptionError, or what is known of a worker lost with its node."""
    info = getattr(error, "preemption_info", None)
    if info is None:
        return {"noticed": None}
    return {
        "noticed": None,
        "nodes": info.preempted_node_ids,
        "ranks": info.preempted_ranks,
        "deadline_ms": info.deadline_ms,
    }


def _worker_cause(error) -> str:
    """'rank R: what failed' for the lowest failed rank of a worker group error, else the error."""
    failures = getattr(error, "worker_failures", None)
    if failures:
        rank, worker_error = min(failures.items())
        return f"rank {rank}: {failure_summary(worker_error)}"
    return failure_summary(error)


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


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
