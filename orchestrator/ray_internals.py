"""Every place orch leans on a private part of Ray (written against Ray 2.60), each behind one
small function. When a Ray release moves or reshapes one of them, the function raises
RayInternalChanged naming the Ray version and what moved, instead of quietly doing nothing;
tests/test_ray_internals.py calls each of them against the installed Ray.

- Ray Train V2's test for a worker lost to node preemption (its failure policy charges
  preemptions to a budget of their own, so orch must not count them as failures).
- Ray's token authentication, which Ray's own clients use only for a cluster they find locally;
  orch talks to remote heads that ask for a token.
- Ray Train's checkpoint record (checkpoint_manager_snapshot.json in a run's folder), from which
  damaged checkpoints are dropped so that Ray neither restores from them nor later deletes a good
  checkpoint of the same name; and the same record in the memory of a running Ray Train
  controller (its CheckpointManager), for a damaged checkpoint found while the run goes on.
- Ray Train V2's internal callback classes: a worker-group callback runs on the controller before
  Ray hands its latest checkpoint to a new worker group, a worker callback on each worker
  actor's main thread (where a SIGTERM handler can be installed), a controller callback on every
  change of the controller's state (where preemptions and failures are seen as Ray decides them).
- A worker's own preemption notice (the PreemptionInfo Ray Train's watcher hands each worker on a
  node drain), which a SIGTERM'd worker sets for itself so that Ray treats it as one.
- Ray's internal key-value store in the GCS, through which a run's driver hands `orch stop --save`
  to its workers.
- The names of Ray's loggers that orch quiets (token setup, the job submission client's).
- The GCS's DrainNode call (what `ray drain-node`, autoscaler v2 and KubeRay make), with which a
  Kubernetes worker pod's preStop hook drains its own node for preemption.
"""

import gc
import logging
import os

import ray

CHECKPOINT_RECORD = "checkpoint_manager_snapshot.json"
TOKEN_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"
# The job submission client's loggers, with the level that keeps them quiet: "Uploading package
# ...", "Ignoring upload ... .gitignore", "Directory '.venv' is now ignored by default" (orch
# leaves it out anyway) are news to nobody who runs `orch submit`.
JOB_SUBMISSION_LOGGERS = {
    "ray.dashboard.modules.dashboard_sdk": logging.WARNING,
    "ray.dashboard.modules.job.sdk": logging.WARNING,
    "ray._private.runtime_env.packaging": logging.WARNING,
    "ray._private.runtime_env.working_dir": logging.ERROR,
}
_RECORD_LISTS = ("checkpoint_results", "checkpoint_report_indices")
_PENDING_LISTS = ("pending_training_results", "pending_validation_specs")


class RayInternalChanged(RuntimeError):
    """A private part of Ray that orch uses is not where or what it was in Ray 2.60."""


def _changed(what: str, exc: BaseException | None = None) -> RayInternalChanged:
    detail = f" ({type(exc).__name__}: {exc})" if exc else ""
    return RayInternalChanged(
        f"Ray {ray.__version__} changed {what}{detail}; orch was written against Ray 2.60 "
        "and needs updating (orchestrator/ray_internals.py)"
    )


def is_preempted(error: BaseException) -> bool:
    """Whether a worker group's error is a worker lost to node preemption."""
    try:
        from ray.train.v2._internal.execution.worker_group.poll import _is_preempted_actor
    except ImportError as exc:
        raise _changed("ray.train.v2._internal.execution.worker_group.poll._is_preempted_actor", exc) from None
    return bool(_is_preempted_actor(error))


def running_ray_address() -> str | None:
    """The Ray `ray.init()` would join instead of starting one: $RAY_ADDRESS, else the newest
    started on this machine with `ray start`; None when it would start its own."""
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError as exc:
        raise _changed("ray._private.services.canonicalize_bootstrap_address", exc) from None
    return canonicalize_bootstrap_address(None)


def use_cluster_token() -> None:
    """Send the token at hand ($RAY_AUTH_TOKEN, ~/.ray/auth_token) to a head that checks tokens,
    unless RAY_AUTH_MODE says otherwise."""
    logging.getLogger(TOKEN_SETUP_LOGGER).setLevel(logging.ERROR)  # "token auth is on": noise to a researcher
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError as exc:
        raise _changed(f"{TOKEN_SETUP_LOGGER}.maybe_enable_token_auth_if_token_available", exc) from None
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def auth_headers() -> dict:
    """The Authorization header Ray's clients send in token mode ({} when auth is off)."""
    name = "ray._private.authentication.http_token_authentication"
    try:
        from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled
    except ImportError as exc:
        raise _changed(f"{name}.get_auth_headers_if_auth_enabled", exc) from None
    return get_auth_headers_if_auth_enabled({})


def check_checkpoint_record(record) -> None:
    """Raise RayInternalChanged unless `record` has the shape Ray 2.60 writes."""
    if not isinstance(record, dict):
        problems = ["not a JSON object"]
    else:
        problems = [key for key in _RECORD_LISTS + _PENDING_LISTS if not isinstance(record.get(key), list)]
    if not problems:
        results = record["checkpoint_results"] + record["pending_training_results"]
        if not all(isinstance(r, dict) and "checkpoint_dir_name" in r for r in results):
            problems = ["results without checkpoint_dir_name"]
    if problems:
        written_by = record.get("ray_version", "?") if isinstance(record, dict) else "?"
        raise _changed(f"the shape of {CHECKPOINT_RECORD} (written by Ray {written_by}: {', '.join(problems)})")


def recorded_checkpoints(record: dict) -> list[str]:
    """The folder names of the checkpoints Ray has recorded, in its order."""
    check_checkpoint_record(record)
    return [r["checkpoint_dir_name"] for r in record["checkpoint_results"]]


def drop_from_checkpoint_record(record: dict, names: set[str]) -> dict:
    """`record` without the checkpoints whose folder names are in `names`; the newest surviving
    report becomes the latest one Ray hands to restarted workers."""
    check_checkpoint_record(record)
    record = dict(record)
    kept = _without(names, record, "checkpoint_results", "checkpoint_report_indices")
    _without(names, record, "pending_training_results", "pending_validation_specs")
    latest = record.get("latest_checkpoint_result")
    if latest and latest["checkpoint_dir_name"] in names:
        record["latest_checkpoint_result"] = max(kept, key=lambda p: p[1])[0] if kept else None
    return record


def _without(names: set[str], record: dict, results_key: str, partner_key: str) -> list[tuple]:
    """Drop the named results from record[results_key] and the matching entries of the parallel
    list record[partner_key]; returns the (result, partner) pairs kept."""
    kept = [(r, p) for r, p in zip(record[results_key], record[partner_key]) if r["checkpoint_dir_name"] not in names]
    record[results_key] = [r for r, _ in kept]
    record[partner_key] = [p for _, p in kept]
    return kept


def callback_bases() -> tuple[type, type]:
    """(WorkerGroupCallback, WorkerCallback): Ray Train V2's internal callback classes, which
    RunConfig(callbacks=...) accepts beside UserCallbacks."""
    try:
        from ray.train.v2._internal.execution.callback import WorkerCallback, WorkerGroupCallback
    except ImportError as exc:
        raise _changed("ray.train.v2._internal.execution.callback.{WorkerGroupCallback,WorkerCallback}", exc) from None
    for cls, hook in ((WorkerGroupCallback, "before_init_train_context"), (WorkerCallback, "after_init_train_context")):
        if not callable(getattr(cls, hook, None)):
            raise _changed(f"{cls.__name__}.{hook}")
    return WorkerGroupCallback, WorkerCallback


def controller_callback_base() -> type:
    """Ray Train V2's ControllerCallback: after_controller_state_update(previous, current) runs on
    the controller at every state change (RunningState, PreemptingState, RestartingState, ...)."""
    try:
        from ray.train.v2._internal.execution.callback import ControllerCallback
    except ImportError as exc:
        raise _changed("ray.train.v2._internal.execution.callback.ControllerCallback", exc) from None
    if not callable(getattr(ControllerCallback, "after_controller_state_update", None)):
        raise _changed("ControllerCallback.after_controller_state_update")
    return ControllerCallback


def state_name(state) -> str:
    """A controller state's class name: PreemptingState, RestartingState, ErroredState, ..."""
    return type(state).__name__


def state_preemption(state) -> dict | None:
    """{nodes, ranks, deadline_ms} of a PreemptingState's notice, else None."""
    info = getattr(state, "preemption_info", None)
    if info is None:
        return None
    return {"nodes": info.preempted_node_ids, "ranks": info.preempted_ranks, "deadline_ms": info.deadline_ms}


def state_error(state):
    """The TrainingFailedError a RestartingState, ReschedulingState or ErroredState carries, else None."""
    return getattr(state, "training_failed_error", None)


def is_preemption_failure(error) -> bool:
    """Whether Ray charges `error` (a TrainingFailedError) to its preemption budget: a
    PreemptionError, or a worker group error in which a worker died with its preempted node."""
    from ray.train import PreemptionError, WorkerGroupError

    if isinstance(error, PreemptionError):
        return True
    return isinstance(error, WorkerGroupError) and any(is_preempted(e) for e in error.worker_failures.values())


def preemption_announced() -> bool:
    """Whether this worker holds a preemption notice (from Ray Train's watcher, or its own)."""
    return _preemption_holder()[1].preemption_info is not None


def preempted_here() -> bool:
    """Whether this worker's rank is among the ranks its preemption notice names (its node is
    the one going away)."""
    context, holder = _preemption_holder()
    info = holder.preemption_info
    return info is not None and context.get_world_rank() in info.preempted_ranks


def _preemption_holder():
    """(this worker's TrainContext, the object that holds its preemption notice)."""
    try:
        from ray.train.v2._internal.execution.context import get_train_context
    except ImportError as exc:
        raise _changed("ray.train.v2._internal.execution.context.get_train_context", exc) from None
    context = get_train_context()
    holder = getattr(context, "preemption_context", None)
    if holder is None or not hasattr(holder, "preemption_info"):
        raise _changed("TrainContext.preemption_context.preemption_info")
    return context, holder


def announce_preemption(deadline_s: float) -> None:
    """Set this worker's preemption notice, as Ray Train's watcher sets every worker's on a node
    drain: this worker's node and rank, and the deadline (a Unix time). Ray's controller then
    waits for the worker group until the deadline (or until every worker has ended) and restarts
    it, charged to FailureConfig.max_preemption_failures. Called again with an earlier deadline,
    the controller restarts at that one (it keeps the earliest it saw)."""
    from ray.train import PreemptionInfo

    context, holder = _preemption_holder()
    node = ray.get_runtime_context().get_node_id()
    holder.preemption_info = PreemptionInfo(
        deadline_ms=int(deadline_s * 1000), preempted_node_to_ranks={node: [context.get_world_rank()]}
    )


def kv_put(key: str, value: bytes) -> None:
    _internal_kv("put")(key.encode(), value, overwrite=True)


def kv_get(key: str) -> bytes | None:
    return _internal_kv("get")(key.encode())


def kv_del(key: str) -> None:
    _internal_kv("del")(key.encode())


def _internal_kv(op: str):
    """ray.experimental.internal_kv's _internal_kv_{op}: Ray's key-value store in the GCS of the
    Ray this process is connected to."""
    try:
        from ray.experimental import internal_kv
    except ImportError as exc:
        raise _changed("ray.experimental.internal_kv", exc) from None
    function = getattr(internal_kv, f"_internal_kv_{op}", None)
    if function is None:
        raise _changed(f"ray.experimental.internal_kv._internal_kv_{op}")
    return function


def drain_node(gcs_address: str, node_id: str, deadline_s: float, message: str) -> None:
    """Ask the GCS to drain node `node_id` for preemption, with a deadline (a Unix time), as
    `ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION` does; raises RuntimeError when the
    GCS refuses."""
    try:
        from ray.core.generated import autoscaler_pb2

        reason = autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION")
        client = ray._raylet.GcsClient(address=gcs_address)
    except (ImportError, AttributeError, ValueError) as exc:
        raise _changed("ray._raylet.GcsClient or autoscaler_pb2.DrainNodeReason", exc) from None
    accepted, why = client.drain_node(node_id, reason, message, int(deadline_s * 1000))
    if not accepted:
        raise RuntimeError(f"the GCS did not drain node {node_id}: {why}")


def controller_checkpoint_manager():
    """The CheckpointManager of the Ray Train controller this code runs in (a controller-side
    callback's process holds exactly one)."""
    try:
        from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import CheckpointManager
    except ImportError as exc:
        raise _changed("ray.train.v2._internal.execution.checkpoint.checkpoint_manager", exc) from None
    managers = [o for o in gc.get_objects() if isinstance(o, CheckpointManager)]
    if len(managers) != 1:
        raise _changed(f"where the controller keeps its CheckpointManager ({len(managers)} found in this process)")
    for name in ("_checkpoint_results", "_latest_checkpoint_result", "_checkpoint_to_report_index"):
        if not hasattr(managers[0], name):
            raise _changed(f"CheckpointManager.{name}")
    return managers[0]


def latest_recorded(manager):
    """The Checkpoint (path, filesystem) the controller hands a new worker group, or None."""
    latest = manager._latest_checkpoint_result
    return latest.checkpoint if latest is not None else None


def drop_from_checkpoint_manager(manager, names: set[str]) -> None:
    """Drop the checkpoints whose folder names are in `names` from a running controller's record
    (and the record it writes to storage); the newest surviving report becomes the latest."""

    def named(result) -> bool:
        return os.path.basename(result.checkpoint.path.rstrip("/")) in names

    dropped = [r for r in manager._checkpoint_results if named(r)]
    manager._checkpoint_results = [r for r in manager._checkpoint_results if not named(r)]
    for result in dropped:
        manager._checkpoint_to_report_index.pop(result.checkpoint, None)
        getattr(manager, "_pending_training_results", {}).pop(result.checkpoint, None)
    latest = manager._latest_checkpoint_result
    if latest is not None and named(latest):
        index = manager._checkpoint_to_report_index
        kept = manager._checkpoint_results
        manager._latest_checkpoint_result = max(kept, key=lambda r: index.get(r.checkpoint, -1)) if kept else None
    try:
        manager._write_state_to_storage()
    except AttributeError as exc:
        raise _changed("CheckpointManager._write_state_to_storage", exc) from None
