"""Curves inside epochs: rank 0 logs `step/train_loss`, `step/lr` and `step/images_per_second`
every N training steps, with step = the global step (epoch * steps_per_epoch + batch), beside the
per-epoch metrics (step = epoch).

- step/train_loss is the loss of rank 0's batch at that step (one rank: the others' would only
  repeat it, and summing them would need a collective);
- step/images_per_second is rank 0's rate since the last point times the number of ranks.

It never makes the host wait for the GPU: the loss is copied into pinned memory behind a CUDA
event, and a background thread waits for that event and sends the points to MLflow, so neither
the GPU queue nor MLflow's latency holds up a step. The run's tag orch.steps_per_epoch tells
readers (the terminal's progress line) how many steps an epoch has.
"""

import logging
import queue
import threading
import time

import torch

from orchestrator.tags import STEP_LOSS, STEP_LR, STEP_RATE

logger = logging.getLogger(__name__)
POINTS_PER_EPOCH = 32  # "a few dozen" points per epoch unless tracking.log_every_n_steps says otherwise
_STOP = object()


def every_n_steps(steps_per_epoch: int, configured: int | None = None) -> int:
    """Log every N steps: tracking.log_every_n_steps, else about POINTS_PER_EPOCH points an epoch."""
    return configured or max(1, steps_per_epoch // POINTS_PER_EPOCH)


class StepLogger:
    """Called after every training step on every rank; acts on rank 0 every `every` steps."""

    def __init__(self, uri: str | None, run_id: str | None, *, every: int, world_size: int, active: bool):
        self.every, self.world_size = every, world_size
        self.active = bool(active and uri and run_id)
        self._queue: queue.Queue = queue.Queue()
        self._last = None  # (global step, time) of the last point
        if self.active:
            self._thread = threading.Thread(target=self._send, args=(uri, run_id), daemon=True)
            self._thread.start()

    def tag(self, key: str, value: str) -> None:
        """Set a tag on the run from rank 0 (the others do nothing), through the sending thread."""
        if self.active:
            self._queue.put(("tag", key, value))

    def __call__(self, step: int, loss: torch.Tensor, lr: float, batch_size: int) -> None:
        """After global step `step` (its loss still on the device)."""
        if not self.active or step % self.every:
            return
        now = time.perf_counter()
        rate = None
        if self._last is not None and step > self._last[0]:
            rate = (step - self._last[0]) * batch_size * self.world_size / max(now - self._last[1], 1e-9)
        self._last = (step, now)
        self._queue.put(("point", step, _host_copy(loss), lr, rate))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self, timeout_s: float = 30) -> None:
        """Send what is queued (the run ends after its last epoch's report)."""
        if self.active:
            self._queue.put(_STOP)
            self._thread.join(timeout_s)

    def _send(self, uri: str, run_id: str) -> None:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        while (item := self._queue.get()) is not _STOP:
            try:
                if item[0] == "tag":
                    client.set_tag(run_id, item[1], item[2])
                    continue
                _, step, (value, ready), lr, rate = item
                if ready is not None:
                    ready.synchronize()  # this thread waits for the copy; the training loop never does
                stamp = int(time.time() * 1000)
                points = [Metric(STEP_LOSS, float(value), stamp, step), Metric(STEP_LR, lr, stamp, step)]
                if rate is not None:
                    points.append(Metric(STEP_RATE, rate, stamp, step))
                client.log_batch(run_id, metrics=points)
            except Exception as exc:  # a store that does not answer must not stop training
                logger.warning("step metrics not logged: %s", exc)


def _host_copy(loss: torch.Tensor):
    """(a host tensor that will hold the loss, a CUDA event to wait for first, or None)."""
    value = loss.detach()
    if value.device.type != "cuda":
        return value.clone(), None
    host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
    host.copy_(value, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return host, ready
