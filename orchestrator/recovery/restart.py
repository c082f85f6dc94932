"""Where a run continues from: `restart_point` is the one place that decides it, whichever path
restores.

- Ray Train restarting a failed worker group: `RestartPointKeeper`, a callback on Ray Train's
  controller, runs it just before Ray hands its latest checkpoint to the new workers, so Ray
  hands the checkpoint it chose;
- `orch resume`: the resume path runs it before the new trainer starts (orchestrator/targets/resume.py);
- a step checkpoint (preemption, `orch stop --save`, checkpoint.every_n_steps) is one more
  checkpoint in the run's folder, chosen like the others: the newest that verifies.

A damaged checkpoint newer than the one chosen is renamed NAME.damaged (kept for a post-mortem)
and dropped from Ray Train's record of the run, so that Ray neither hands it out again nor, when
a new checkpoint of the same name is written, deletes the good one under the damaged one's
record; the warning is recorded on the MLflow run (tag orch.restore_warning).
"""

import json
import logging
from dataclasses import dataclass, field

from orchestrator import ray_internals
from orchestrator.tags import RESTORE_WARNING_TAG
from orchestrator.train.checkpoint import latest_good, open_location

logger = logging.getLogger(__name__)


@dataclass
class RestartPoint:
    location: str | None  # the checkpoint to continue from; None: nothing verifies
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (location, why), newest first

    @property
    def warning(self) -> str | None:
        if not self.damaged:
            return None
        problems = "; ".join(f"{location} is damaged ({why})" for location, why in self.damaged)
        then = f"continuing from {self.location}" if self.location else "no earlier checkpoint verifies"
        return f"{problems}; set aside as NAME.damaged; {then}"


def restart_point(run_dir: str, *, newest: str | None = None, fs=None, drop_from_record=None) -> RestartPoint:
    """The newest checkpoint in `run_dir` (a local path or URI; with `fs`, a path on it) that
    verifies, at or before `newest` when given (Ray's latest: what Ray retained decides). When
    one verifies, the damaged ones newer than it are set aside: renamed and dropped from Ray's
    record by `drop_from_record(names)` (default: the record file in run_dir). When none does,
    nothing is moved: the caller reports that no checkpoint verifies."""
    point = RestartPoint(*latest_good(run_dir, fs, newest=newest))
    if point.location is not None and point.damaged:
        names = {_name(location) for location, _ in point.damaged}
        _rename_aside(run_dir, names, fs)
        (drop_from_record or (lambda dropped: drop_from_record_file(run_dir, dropped, fs)))(names)
    return point


def drop_from_record_file(run_dir: str, names: set[str], fs=None) -> None:
    """Drop checkpoints from the record Ray Train keeps in run_dir, for a run no controller
    holds in memory (before `orch resume` starts one)."""
    fs, root = open_location(run_dir, fs)
    path = f"{root}/{ray_internals.CHECKPOINT_RECORD}"
    try:
        with fs.open_input_stream(path) as f:
            record = json.loads(f.read().decode())
    except (OSError, ValueError):
        return  # no record yet: Ray writes none before the first checkpoint
    record = ray_internals.drop_from_checkpoint_record(record, names)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(record).encode())


def _rename_aside(run_dir: str, names: set[str], fs=None) -> None:
    fs, root = open_location(run_dir, fs)
    for name in names:
        fs.move(f"{root}/{name}", f"{root}/{name}.damaged")


def keeper(uri: str, run_id: str, verified: str | None = None):
    """The controller-side callback for a trainer of run `run_id` (tracked in `uri`); `verified`:
    the checkpoint `orch resume` chose and verified, which the first worker group takes as is."""
    group_callback, _ = ray_internals.callback_bases()

    class RestartPointKeeper(group_callback):
        """Before each worker group starts, checks the checkpoint Ray is about to hand it and
        sets damaged ones aside, in Ray's own record, through restart_point: each restart
        verifies its checkpoint once, here (the workers trust it)."""

        def __init__(self):
            self.verified = verified

        def before_init_train_context(self, workers):
            manager = ray_internals.controller_checkpoint_manager()
            latest = ray_internals.latest_recorded(manager)
            trusted, self.verified = self.verified, None
            if latest is None or (trusted and _name(latest.path) == _name(trusted)):  # one run's folder
                return {}
            run_dir = latest.path.rstrip("/").rsplit("/", 1)[0]
            point = restart_point(
                run_dir,
                newest=latest.path,
                fs=latest.filesystem,
                drop_from_record=lambda names: ray_internals.drop_from_checkpoint_manager(manager, names),
            )
            if point.warning:
                logger.warning(point.warning)
                record_warning(uri, run_id, point.warning)
            return {}

    return RestartPointKeeper()


def _name(location: str) -> str:
    """A checkpoint's folder name (a path or a URI's last part): unique within its run's folder."""
    return location.rstrip("/").rsplit("/", 1)[-1]


def record_warning(uri: str, run_id: str, warning: str) -> None:
    """The run's orch.restore_warning tag (the epoch printer tells it)."""
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).set_tag(run_id, RESTORE_WARNING_TAG, warning[:5000])
