"""What a person reads while a job runs: one line per epoch, a progress line inside each epoch
(orchestrator/console/terminal.py, on stderr), then a summary.

The driver learns of each epoch and step from MLflow, where the controller and rank 0 log them,
so these lines show exactly what the run recorded.
"""

import shlex
import threading
import time

import click
from mlflow.tracking import MlflowClient

from orchestrator.console.terminal import (
    LiveLine,
    StepRate,
    duration,
    format_progress,
    newest_point,
    orch_program,
)
from orchestrator.runs.tracking import epoch_history, tracking_uri
from orchestrator.tags import (
    EPOCH_TAG,
    LAST_RESTART_CAUSE_TAG,
    PRECISION_TAG,
    RESTARTS_TAG,
    RESTORE_WARNING_TAG,
    STEPS_TAG,
)

_FIELDS = ("train_loss", "val_top1_error", "val_top5_error", "train_images_per_second", "epoch_seconds")
_OPTIONAL = ("data_wait_fraction",)


class EpochPrinter(threading.Thread):
    """Polls the run's metrics: prints each new epoch once and, inside an epoch, the progress line
    from its step metrics (when the run logs them)."""

    def __init__(
        self, uri: str, run_id: str, epochs: int, err: bool, interval: float = 2.0, skip=(), live: LiveLine = None
    ):
        super().__init__(daemon=True)
        self.uri, self.run_id, self.epochs, self.err, self.interval = uri, run_id, epochs, err, interval
        self.live = live or LiveLine()
        self._halt = threading.Event()
        self._printed: set[int] = set(skip)  # epochs a resumed run printed before
        self._told: dict[str, str] = {}
        self._rate = StepRate()
        self._since, self._progressed = time.monotonic(), False  # an epoch or a step shown since
        run = self._run()
        tags = run.data.tags if run else {}
        self._tell_restarts(tags, quiet=True)  # a resumed run's earlier restarts were told then
        self._steps_told = STEPS_TAG in tags  # a resumed run's workers were ready before
        self._shown = newest_point(latest_metrics(run)) if run else None  # a resumed run's last point

    def run(self):
        while not self._halt.wait(self.interval):
            self.flush()

    def stop(self):
        self._halt.set()
        self.join(timeout=10)
        self.flush()
        self.live.clear()

    def flush(self):
        run = self._run()
        if run is None:  # a busy sqlite store: try again on the next tick
            return
        # The run's orch.epoch tag names the newest epoch logged in full; the metric histories
        # are read only when it is one not printed yet (one query a tick, not one per metric).
        newest = _int(run.data.tags.get(EPOCH_TAG))
        if newest is not None and newest not in self._printed:
            self._print_epochs()
        self._tell_restarts(run.data.tags)
        self._show_steps(run)

    def _print_epochs(self) -> None:
        try:
            epochs = logged_epochs(self.uri, self.run_id)
        except Exception:  # a busy sqlite store: try again on the next tick
            return
        for epoch, values in epochs.items():
            if epoch not in self._printed:
                self._printed.add(epoch)
                self._progressed = True
                self.live.clear()
                click.echo(format_epoch(epoch, self.epochs, values), err=self.err)

    def _run(self):
        try:
            return MlflowClient(self.uri).get_run(self.run_id)
        except Exception:
            return None

    def _show_steps(self, run) -> None:
        """Say when the workers are ready, then show each new step point of an epoch not printed
        yet; on a terminal, until the first one, how long the workers have taken so far."""
        steps_per_epoch = _int(run.data.tags.get(STEPS_TAG))
        if steps_per_epoch and not self._steps_told and not self._progressed:
            precision = run.data.tags.get(PRECISION_TAG)
            precision = f", precision {precision}" if precision else ""
            self._echo(
                f"orch: workers ready, {steps_per_epoch} steps an epoch{precision}: FFCV compiles its pipeline first"
            )
        self._steps_told = self._steps_told or bool(steps_per_epoch)
        point = newest_point(latest_metrics(run)) if steps_per_epoch else None
        if point is None or point == self._shown or point.step // steps_per_epoch in self._printed:
            self._show_waiting(bool(steps_per_epoch))
            return
        self._shown, self._progressed = point, True
        rate = self._rate.update(point, steps_per_epoch)
        self.live.show(format_progress(point, steps_per_epoch, self.epochs, rate))

    def _show_waiting(self, ready: bool) -> None:
        """'waiting for the workers: 25s' on a terminal, until the first step or epoch shows."""
        if self.live.tty and not self._progressed:
            what = "the first step (FFCV compiles its pipeline)" if ready else "the workers"
            self.live.show(f"waiting for {what}: {duration(time.monotonic() - self._since)}")

    def _tell_restarts(self, tags: dict, quiet: bool = False):
        """Say when Ray Train restarted the workers (after a preemption or a failure), and when
        a damaged checkpoint was skipped or a step checkpoint's epoch started again."""
        for key, say in (
            (RESTARTS_TAG, lambda n: restart_text(tags, n)),
            (RESTORE_WARNING_TAG, "warning: ".__add__),
        ):
            value = tags.get(key)
            if value and self._told.get(key) != value:
                self._told[key] = value
                if not quiet:
                    self._echo(say(value))

    def _echo(self, text: str) -> None:
        """A line on stderr, with the progress line taken off the terminal first."""
        self.live.clear()
        click.echo(text, err=True)


def restart_text(tags: dict, number: str) -> str:
    """What restart `number` was: 'preempted (...)' or 'workers failed (...)'."""
    cause = tags.get(LAST_RESTART_CAUSE_TAG, "?")
    what = "preempted" if cause.startswith("preemption") else "workers failed"
    return f"{what} ({cause}): restart {number}, continuing from the latest checkpoint"


def latest_metrics(run) -> dict:
    """{key: (value, step, timestamp in ms)}: each metric's latest point, as MLflow has it."""
    return {m.key: (m.value, m.step, m.timestamp) for m in run.data.to_proto().metrics}


def _int(text) -> int | None:
    return int(text) if text and str(text).isdigit() else None


def logged_epochs(uri: str, run_id: str) -> dict[int, dict]:
    """{epoch: the values an epoch line shows}, in order, for every epoch logged in full."""
    history = {key: epoch_history(uri, run_id, key) for key in _FIELDS + _OPTIONAL}
    return {
        epoch: {k: history[k][epoch] for k in _FIELDS + _OPTIONAL if epoch in history[k]}
        for epoch in sorted(history["val_top1_error"])
        if all(epoch in history[k] for k in _FIELDS)
    }


def format_epoch(epoch: int, epochs: int, m: dict) -> str:
    left = (epochs - epoch - 1) * m["epoch_seconds"]
    return (
        f"epoch {epoch + 1:>3}/{epochs}  loss {m['train_loss']:.4f}  "
        f"top-1 err {m['val_top1_error']:6.2f}%  top-5 err {m['val_top5_error']:6.2f}%  "
        f"{m['train_images_per_second']:,.0f} img/s{_data_wait(m)}  {duration(m['epoch_seconds'])}/epoch  "
        f"left ~{duration(left)}"
    )


def _data_wait(m: dict) -> str:
    """' (data wait 12%)': how much of the epoch the slowest rank waited for its loader."""
    wait = m.get("data_wait_fraction")
    return "" if wait is None else f" (data wait {100 * wait:.0f}%)"


_SUMMARY_ORDER = (
    "epoch",
    "best_val_top1_error",
    "best_val_top5_error",
    "val_top1_error",
    "val_top5_error",
    "val_loss",
    "train_loss",
    "lr",
    "train_images_per_second",
    "epoch_seconds",
    "data_wait_fraction",
    "val_samples",
)


def format_summary(outcome) -> str:
    """What `orch submit` and `orch resume` print at the end (a JobOutcome)."""
    shown = sorted(outcome.metrics, key=_summary_rank)
    lines = [
        f"run {outcome.run_id}: {outcome.status}",
        *(f"  {k:<24} {summary_value(k, outcome.metrics[k], outcome.epochs)}" for k in shown),
        f"  {'best checkpoint':<24} {outcome.best_checkpoint or '(none)'}",
        f"  {'dashboard':<24} {dashboard(outcome.tracking_uri)}",
    ]
    return "\n".join(lines)


def _summary_rank(key: str) -> tuple:
    """Where a metric comes in the summary: _SUMMARY_ORDER, then any other by name."""
    return (_SUMMARY_ORDER.index(key), "") if key in _SUMMARY_ORDER else (len(_SUMMARY_ORDER), key)


def summary_value(key: str, value, epochs: int | None = None) -> str:
    """A metric as the summary shows it: errors in %, the epoch as the epoch lines count it (3/3)."""
    if key == "epoch":
        return f"{int(value) + 1}/{epochs}" if epochs else str(int(value) + 1)
    if key.endswith("_error"):
        return f"{value:.2f}%"
    if key == "data_wait_fraction":
        return f"{100 * value:.0f}%"
    if key == "epoch_seconds":
        return duration(value)
    if key == "train_images_per_second":
        return f"{value:,.0f} img/s"
    return _number(value)


def dashboard(uri: str) -> str:
    """How to open MLflow's UI on the store `uri` from this shell: `orch ui`, with --tracking-uri
    when `orch ui` alone would open another store; a server is its own UI."""
    if uri.startswith(("http://", "https://")):
        return uri
    command = f"{orch_program()} ui"
    if uri != tracking_uri():
        command += f" --tracking-uri {shlex.quote(uri)}"
    return f"{command}, then open http://127.0.0.1:5000"


def _number(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
