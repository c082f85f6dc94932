"""Learning rate as a pure function of the step: resuming needs no scheduler state."""

import math

from orchestrator.spec.schema import ScheduleSpec


def lr_at(step: int, steps_per_epoch: int, base_lr: float, sched: ScheduleSpec, epochs: int) -> float:
    """The learning rate for optimizer step `step` (0-based, counted over the whole run)."""
    epoch = step / steps_per_epoch
    if epoch < sched.warmup_epochs:
        frac = epoch / sched.warmup_epochs
        return base_lr * (sched.warmup_start_factor + (1 - sched.warmup_start_factor) * frac)
    return base_lr * _decay_factor(epoch, sched, epochs)


def _decay_factor(epoch: float, sched: ScheduleSpec, epochs: int) -> float:
    if sched.kind == "constant":
        return 1.0
    if sched.kind == "step":
        passed = sum(1 for m in sched.milestones if epoch >= m)
        return sched.factor**passed
    span = max(epochs - sched.warmup_epochs, 1e-9)
    progress = min(max((epoch - sched.warmup_epochs) / span, 0.0), 1.0)
    floor = sched.min_lr_factor
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def scaled_lr(lr_per_256: float, global_batch: int) -> float:
    """The linear scaling rule: lr grows with the global batch."""
    return lr_per_256 * global_batch / 256
