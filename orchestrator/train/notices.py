"""Notices that reach a training worker group between steps: a preemption, and `orch stop --save`.

- A preemption arrives as Ray's own notice. Ray Train's preemption watcher sees a node of the
  worker group being drained (GCS DrainNode with reason PREEMPTION: a spot reclaim, an
  autoscaler's or KubeRay's scale-down, the preStop hook orch gives Kubernetes worker pods) and
  hands every worker its PreemptionInfo; `ray.train.get_preemption_info()` reads it.
- A SIGTERM to a training worker becomes the same notice: `sigterm_callback()` installs a
  handler that announces a preemption of this worker to Ray Train, with the deadline
  training.termination_grace_s away, so Ray charges what follows to its preemption budget.
- `orch stop --save` sets the run's orch.stop_request tag. The run's driver, which watches the
  run anyway, copies it into Ray's key-value store (`relay_stop`), where rank 0 reads it.

`NoticeCheck.check()` runs on every rank every training.notice_every_n_steps steps, the same
number of times on each (Ray's barrier requires it): Ray's preemption barrier, then one
all_reduce of the ranks' own requests (a SIGTERM on any rank, the stop on rank 0), on a CPU
group that never waits for the GPU. Nothing is read or reduced between checks. A notice is
answered within Ray's watcher poll (RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S, 5 s by default) plus
notice_every_n_steps steps plus one checkpoint write; that must fit the drain's deadline.

What the loop does then (train/loop.py): a preemption writes a step checkpoint once, every rank
waits until Ray has registered it, and training goes on until Ray restarts the worker group (a
SIGTERM'd worker lets Ray restart it at once, its checkpoint being safe); a stop writes one and
ends training, which `orch resume` continues.
"""

import signal
import threading
import time
from dataclasses import dataclass

from orchestrator import ray_internals
from orchestrator.tags import STOP_TAG

NONE, PREEMPTED, STOP = 0, 1, 2  # ordered: when both are asked, the user's stop wins
REASONS = {PREEMPTED: "preemption", STOP: "orch stop --save"}

_local = {"signalled": False, "grace_s": 60.0}  # this process: SIGTERM taken, and its deadline


def stop_key(run_id: str) -> str:
    """Where a run's stop request waits in Ray's key-value store."""
    return f"orch/stop/{run_id}"


class StopRelay:
    """On a run's driver, while it trains: reads the run's orch.stop_request tag every `interval`
    seconds and, once it is set, hands it to the workers through Ray's key-value store. A new
    attempt (a resume) starts without the request an earlier one carried out."""

    def __init__(self, uri: str, run_id: str, interval: float = 2.0):
        self.uri, self.run_id, self.interval = uri, run_id, interval
        self._done = threading.Event()

    def __enter__(self):
        ray_internals.kv_del(stop_key(self.run_id))
        threading.Thread(target=self._watch, name="orch-stop-relay", daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._done.set()

    def _watch(self) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.uri)
        while not self._done.wait(self.interval):
            try:
                if client.get_run(self.run_id).data.tags.get(STOP_TAG):
                    ray_internals.kv_put(stop_key(self.run_id), b"save")
                    return
            except Exception:  # a store or GCS that does not answer now: the next tick asks again
                continue


def sigterm_callback(grace_s: float):
    """The worker callback that turns this worker process's first SIGTERM into a preemption
    notice with a deadline `grace_s` away; a second SIGTERM exits at once, as Ray's own does."""
    _, worker_callback = ray_internals.callback_bases()

    class SigtermToNotice(worker_callback):
        def after_init_train_context(self):
            install_sigterm_handler(grace_s)  # module-level: this class travels by value, the state must not

    return SigtermToNotice()


def install_sigterm_handler(grace_s: float) -> None:
    """On the worker actor's main thread, for a new worker group (a reused process starts clean)."""
    _local.update(signalled=False, grace_s=grace_s)
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        if _local["signalled"] and callable(previous):
            previous(signum, frame)  # the second one: Ray's handler exits
        _local["signalled"] = True
        ray_internals.announce_preemption(time.time() + _local["grace_s"])

    signal.signal(signal.SIGTERM, on_sigterm)


def signalled() -> bool:
    """Whether this worker got a SIGTERM (its preemption is announced)."""
    return _local["signalled"]


@dataclass
class Notice:
    reason: int  # NONE, PREEMPTED or STOP: the same on every rank
    preemption: dict | None = None  # Ray's notice: nodes, ranks, deadline (None for a SIGTERM's on another rank)


class NoticeCheck:
    """The collective check, every `every` steps."""

    def __init__(self, run_id: str | None, every: int):
        from orchestrator.train import distributed  # torch: on the workers only (the controller unpickles this module)

        self.every = every
        self._key = stop_key(run_id) if run_id else None
        self._dist = distributed
        self._group = distributed.cpu_group()

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def check(self) -> Notice:
        import ray.train

        info = ray.train.get_preemption_info()  # Ray's barrier: the same on every rank
        local = PREEMPTED if signalled() else NONE
        if self._key and self._dist.is_main() and ray_internals.kv_get(self._key):
            local = STOP
        reason = self._dist.max_int_over_ranks(local, self._group)
        if info is None:
            return Notice(reason)
        preemption = {"nodes": info.preempted_node_ids, "ranks": info.preempted_ranks, "deadline_ms": info.deadline_ms}
        return Notice(max(reason, PREEMPTED), preemption)
