"""Stopping between steps with a checkpoint: a SIGTERM to a training worker (a pod eviction, a
spot instance's notice) or `orch stop RUN --save`.

- `SigtermToCheckpoint`, a Ray Train worker callback, installs a SIGTERM handler on each worker
  actor's main thread: the first SIGTERM asks for a checkpoint; a second one exits at once, as
  Ray's own handler does.
- `StopWatcher`, on rank 0, polls the run's MLflow tag orch.stop_request, which `orch stop
  --save` sets.
- `StopRequests.agree()` is called by every rank before every step: one all_reduce (on a CPU
  group: it never waits for the GPU) of each rank's request, so every rank stops at the same step
  whichever rank was signalled; never a race between ranks.

What the loop does then (train/loop.py): a preemption writes a step checkpoint and fails the
worker group, so Ray Train's failure handling restarts it from that checkpoint; a stop request
writes one and ends the run, which `orch resume` continues.
"""

import signal
import threading
import time

from orchestrator import ray_internals
from orchestrator.train import distributed as dist

NONE, PREEMPTED, STOP = 0, 1, 2  # ordered: when both are asked, the user's stop wins
REASONS = {PREEMPTED: "SIGTERM (preemption)", STOP: "orch stop --save"}
STOP_TAG = "orch.stop_request"
POLL_S = 2.0

_local = {"request": NONE}  # this process's own request, set by the handler or the watcher


def request(reason: int) -> None:
    _local["request"] = max(_local["request"], reason)


def local_request() -> int:
    return _local["request"]


def sigterm_callback():
    """The worker callback that turns this worker process's first SIGTERM into a request."""
    _, worker_callback = ray_internals.callback_bases()

    class SigtermToCheckpoint(worker_callback):
        def after_init_train_context(self):
            _local["request"] = NONE  # a new worker group in a reused process starts clean
            previous = signal.getsignal(signal.SIGTERM)

            def on_sigterm(signum, frame):
                if _local["request"] >= PREEMPTED and callable(previous):
                    previous(signum, frame)  # the second one: Ray's handler exits
                request(PREEMPTED)

            signal.signal(signal.SIGTERM, on_sigterm)

    return SigtermToCheckpoint()


class StopWatcher:
    """On rank 0: a daemon thread that reads the run's orch.stop_request tag every POLL_S."""

    def __init__(self, uri: str | None, run_id: str | None):
        self.uri, self.run_id = uri, run_id
        self._done = threading.Event()

    def __enter__(self):
        if self.uri and self.run_id and dist.is_main():
            threading.Thread(target=self._poll, name="orch-stop-watcher", daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._done.set()

    def _poll(self) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.uri)
        while not self._done.wait(POLL_S):
            try:
                if client.get_run(self.run_id).data.tags.get(STOP_TAG):
                    request(STOP)
                    return
            except Exception:  # an unreachable store must not stop training
                time.sleep(POLL_S)


class StopRequests:
    """The collective decision, once per step."""

    def __init__(self):
        self._group = dist.cpu_group()

    def agree(self) -> int:
        """The strongest request any rank holds (NONE, PREEMPTED or STOP), the same on every rank."""
        return dist.max_int_over_ranks(local_request(), self._group)
