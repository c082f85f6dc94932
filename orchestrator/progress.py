"""What a person reads while a job runs: one line per epoch, then a summary.

The driver learns of each epoch from MLflow, where the controller logs it, so these lines
show exactly what the run recorded.
"""

import threading

import click
from mlflow.tracking import MlflowClient

from orchestrator.tracking import epoch_history

_FIELDS = ("train_loss", "val_top1_error", "val_top5_error", "train_images_per_second", "epoch_seconds")
_OPTIONAL = ("data_wait_fraction",)


class EpochPrinter(threading.Thread):
    """Polls the run's metrics and prints each new epoch once."""

    def __init__(self, uri: str, run_id: str, epochs: int, err: bool, interval: float = 2.0, skip=()):
        super().__init__(daemon=True)
        self.uri, self.run_id, self.epochs, self.err, self.interval = uri, run_id, epochs, err, interval
        self._halt = threading.Event()
        self._printed: set[int] = set(skip)  # epochs a resumed run printed before
        self._told: dict[str, str] = {}
        self._tell_restarts(quiet=True)  # a resumed run's earlier restarts were told then

    def run(self):
        while not self._halt.wait(self.interval):
            self.flush()

    def stop(self):
        self._halt.set()
        self.join(timeout=10)
        self.flush()

    def flush(self):
        try:
            epochs = logged_epochs(self.uri, self.run_id)
        except Exception:  # a busy sqlite store: try again on the next tick
            return
        for epoch, values in epochs.items():
            if epoch not in self._printed:
                self._printed.add(epoch)
                click.echo(format_epoch(epoch, self.epochs, values), err=self.err)
        self._tell_restarts()

    def _tell_restarts(self, quiet: bool = False):
        """Say when Ray Train restarted the workers, and when a damaged checkpoint was skipped."""
        try:
            tags = MlflowClient(self.uri).get_run(self.run_id).data.tags
        except Exception:
            return
        for key, text in (
            ("orch.restarts", "workers failed ({cause}): restart {value}, continuing from the latest checkpoint"),
            ("orch.restore_warning", "warning: {value}"),
        ):
            value = tags.get(key)
            if value and self._told.get(key) != value:
                self._told[key] = value
                cause = tags.get("orch.last_restart_cause", "?")
                if not quiet:
                    click.echo(text.format(value=value, cause=cause), err=True)


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
        f"{m['train_images_per_second']:,.0f} img/s{_data_wait(m)}  {_duration(m['epoch_seconds'])}/epoch  "
        f"left ~{_duration(left)}"
    )


def _data_wait(m: dict) -> str:
    """' (data wait 12%)': how much of the epoch the slowest rank waited for its loader."""
    wait = m.get("data_wait_fraction")
    return "" if wait is None else f" (data wait {100 * wait:.0f}%)"


def format_summary(outcome) -> str:
    """What `orch submit` and `orch resume` print at the end (a JobOutcome)."""
    lines = [
        f"run {outcome.run_id}: {outcome.status}",
        *(f"  {k:<24} {_number(v)}" for k, v in sorted(outcome.metrics.items())),
        f"  {'best checkpoint':<24} {outcome.best_checkpoint or '(none)'}",
        f"  {'dashboard':<24} mlflow ui --backend-store-uri {outcome.tracking_uri}",
    ]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _number(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
