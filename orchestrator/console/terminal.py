"""What `orch submit` says on stderr while a job starts and trains, besides the epoch lines: one
line per stage (checking the spec and data, starting Ray, starting the workers, ...) and, inside
each epoch, a progress line built from the step metrics rank 0 logs (`step/train_loss`,
`step/images_per_second` at step = the global step) and the run's tag `orch.steps_per_epoch`.

On a terminal the progress line is rewritten in place (`\\r`); elsewhere (a pipe, a log file) it
is printed as a plain line at most every PLAIN_EVERY_S seconds. Nothing here writes to stdout,
and nothing here imports torch, Ray or MLflow: the first stage line comes before they load.
"""

import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass

import click

from orchestrator.tags import STEP_LOSS, STEP_RATE

PLAIN_EVERY_S = 30.0


def say(text: str) -> None:
    """A stage line on stderr: `orch: TEXT`."""
    click.echo(f"orch: {text}", err=True)


def checking(name: str, target: str, address: str | None) -> str:
    """The first stage of `orch submit`: what it checks before anything starts."""
    if target == "ray":
        return f"checking job {name} and the Ray cluster at {address}"
    return f"checking job {name}: its spec and data"


def connecting() -> str:
    """The stage before joining Ray: the one at $RAY_ADDRESS, else this machine's (started when none runs)."""
    address = os.environ.get("RAY_ADDRESS")
    if address:
        return f"joining the Ray at {address}"
    return "starting Ray on this machine (or joining the one running here)"


def starting_workers(scaling) -> str:
    """The stage before training: how many workers start, and what each does before its first step."""
    each = f"{scaling.gpus_per_worker:g} GPU" if scaling.use_gpu else f"{scaling.cpus_per_worker:g} CPU"
    plural = "s" if scaling.num_workers != 1 else ""
    return (
        f"starting {scaling.num_workers} worker{plural} ({each} each): "
        "each loads torch and builds its FFCV loaders before the first step"
    )


def duration(seconds: float) -> str:
    """'42s', '3m05s', '2h07m'."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def orch_program() -> str:
    """How this shell runs orch again: `orch` when that is on PATH, else the path this process
    was started by (`.venv/bin/orch` after `make demo`, whose venv is not on PATH)."""
    started = sys.argv[0] if sys.argv else ""
    if os.path.basename(started) != "orch":
        return "orch"  # `python -m orchestrator.cli.main`, or orch's code inside another program
    on_path = shutil.which("orch")
    if on_path and os.path.realpath(on_path) == os.path.realpath(started):
        return "orch"
    return started


@dataclass(frozen=True)
class StepPoint:
    """The newest step metrics: after global step `step` (from 0), `at` seconds (the worker's clock)."""

    step: int
    loss: float
    images_per_second: float | None
    at: float


def newest_point(latest: dict) -> StepPoint | None:
    """The newest point from a run's latest metrics, {key: (value, step, timestamp in ms)}; None
    before rank 0 logs one (or for a run trained without step metrics)."""
    if STEP_LOSS not in latest:
        return None
    loss, step, stamp = latest[STEP_LOSS]
    rate = latest.get(STEP_RATE)
    return StepPoint(int(step), loss, rate[0] if rate else None, stamp / 1000)


def format_progress(point: StepPoint, steps_per_epoch: int, epochs: int, steps_per_second: float | None) -> str:
    """'epoch 2/3: step 120/600  loss 0.8123  2,345 img/s  ~2m05s left in the epoch'."""
    epoch, done = divmod(point.step, steps_per_epoch)
    done += 1
    parts = [f"epoch {epoch + 1}/{epochs}: step {done}/{steps_per_epoch}", f"loss {point.loss:.4f}"]
    if point.images_per_second:
        parts.append(f"{point.images_per_second:,.0f} img/s")
    if steps_per_second:
        parts.append(f"~{duration((steps_per_epoch - done) / steps_per_second)} left in the epoch")
    return "  ".join(parts)


class StepRate:
    """Steps per second within the epoch being trained, measured from its first point seen to its
    newest (the validation between epochs never counts); the last measure until there are two."""

    def __init__(self):
        self.first: StepPoint | None = None
        self.value: float | None = None

    def update(self, point: StepPoint, steps_per_epoch: int) -> float | None:
        first = self.first
        if first is None or first.step // steps_per_epoch != point.step // steps_per_epoch or point.step < first.step:
            self.first = point
        elif point.at > first.at and point.step > first.step:
            self.value = (point.step - first.step) / (point.at - first.at)
        return self.value


class LiveLine:
    """The progress line on stderr: rewritten in place on a terminal; elsewhere a plain line, at
    most once every `every` seconds. `clear()` takes it off the terminal before other output."""

    def __init__(self, tty: bool | None = None, every: float = PLAIN_EVERY_S, clock=time.monotonic):
        self.tty = _stderr_is_tty() if tty is None else tty
        self.every, self.clock = every, clock
        self._shown = 0  # characters of the line on the terminal now
        self._printed_at = None  # when the last plain line was printed
        self._lock = threading.Lock()

    def show(self, text: str) -> None:
        with self._lock:
            if self.tty:
                text = text[: _columns() - 1]
                _write("\r" + text + " " * max(0, self._shown - len(text)))
                self._shown = len(text)
            elif self._printed_at is None or self.clock() - self._printed_at >= self.every:
                _write(text + "\n")
                self._printed_at = self.clock()

    def clear(self) -> None:
        with self._lock:
            if self._shown:
                _write("\r" + " " * self._shown + "\r")
                self._shown = 0


def _write(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False


def _columns() -> int:
    """The terminal's width (80 when it says none: a pty without a size reports 0)."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns or 80
    except (AttributeError, OSError, ValueError):
        return 80
