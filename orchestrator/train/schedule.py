"""Learning rate as a pure function of the step: resuming needs no scheduler state.

A warm-up (schedule.warmup) comes first: `constant` holds factor x lr, `linear` rises from
factor x lr to the lr, for its epochs or steps. Then the schedule: `step` multiplies by factor at
each milestone (epochs counted from the run's start), `cosine` falls from the lr at the warm-up's
end to min_lr_factor x lr at the last epoch, `constant` keeps the lr.
"""

import math

from orchestrator.spec.schema import ScheduleSpec


def lr_at(step: int, steps_per_epoch: int, base_lr: float, sched: ScheduleSpec, epochs: int) -> float:
    """The learning rate for optimizer step `step` (0-based, counted over the whole run)."""
    epoch = step / steps_per_epoch
    warmup = sched.warmup
    if warmup is not None:
        done = step / warmup.steps if warmup.steps is not None else epoch / warmup.epochs
        if done < 1:
            factor = warmup.factor if warmup.kind == "constant" else warmup.factor + (1 - warmup.factor) * done
            return base_lr * factor
    return base_lr * _decay_factor(epoch, sched, epochs, warmup_epochs(sched, steps_per_epoch))


def warmup_epochs(sched: ScheduleSpec, steps_per_epoch: int) -> float:
    """The warm-up's length in epochs (0 without one)."""
    warmup = sched.warmup
    if warmup is None:
        return 0.0
    return warmup.epochs if warmup.epochs is not None else warmup.steps / steps_per_epoch


def _decay_factor(epoch: float, sched: ScheduleSpec, epochs: int, warm: float) -> float:
    if sched.kind == "constant":
        return 1.0
    if sched.kind == "step":
        passed = sum(1 for m in sched.milestones if epoch >= m)
        return sched.factor**passed
    span = max(epochs - warm, 1e-9)
    progress = min(max((epoch - warm) / span, 0.0), 1.0)
    floor = sched.min_lr_factor
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def scaled_lr(lr_per_256: float, global_batch: int) -> float:
    """The linear scaling rule: lr grows with the global batch."""
    return lr_per_256 * global_batch / 256


def describe_lr(sched: ScheduleSpec, base_lr: float, epochs: int, steps_per_epoch: int | None = None) -> str:
    """The learning rate's course in words, with its values at this batch: '0.01 for the first
    400 steps (constant warm-up), then 0.1, x0.1 at epochs 82 and 123 (steps 32,062 and
    48,093)'. Steps are given where steps_per_epoch is known."""
    parts = []
    warmup = sched.warmup
    if warmup is not None:
        length = f"{warmup.steps:,} steps" if warmup.steps is not None else f"{warmup.epochs:g} epochs"
        low = _lr(base_lr * warmup.factor)
        if warmup.kind == "constant":
            parts.append(f"{low} for the first {length} (constant warm-up), then {_lr(base_lr)}")
        else:
            parts.append(f"rising linearly from {low} to {_lr(base_lr)} over the first {length} (linear warm-up)")
    else:
        parts.append(_lr(base_lr))
    if sched.kind == "step" and sched.milestones:
        at = _listed([f"{m:g}" for m in sched.milestones])
        text = f"x{sched.factor:g} at epochs {at}"
        if steps_per_epoch:
            text += f" (steps {_listed([f'{round(m * steps_per_epoch):,}' for m in sched.milestones])})"
        parts.append(text)
    elif sched.kind == "cosine":
        parts.append(f"cosine down to {_lr(base_lr * sched.min_lr_factor)} at epoch {epochs}")
    else:
        parts.append("constant" if warmup is None else "constant after it")
    return ", ".join(parts)


def _lr(value: float) -> str:
    return f"lr {value:.4g}"


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
