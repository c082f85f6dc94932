"""From what a user types (an MLflow run id, a unique run name, or a directory) to a checkpoint.

A run's checkpoints are the `epoch_NNNN/` directories under its `orch.checkpoint_dir` tag.
`best` is the one with the lowest meta.json val_top1_error (ties: the later epoch); `latest`
the highest epoch. A directory holding meta.json is a checkpoint; one holding `epoch_NNNN/`
directories is treated like a run's checkpoint dir.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import OrchError
from orchestrator.run_lookup import find_run, list_runs, store_exists
from orchestrator.train.checkpoint import (
    CHECKSUMS_FILE,
    META_FILE,
    MODEL_FILE,
    DamagedCheckpoint,
    epoch_of,
    list_checkpoints,
    load_meta,
    sha256_file,
    verify,
)

CHOICES = ("best", "latest")


class CheckpointError(OrchError):
    """A run or checkpoint cannot be found, chosen or read."""


@dataclass(frozen=True)
class Member:
    """One resolved checkpoint and the run it belongs to (None for a directory no run names)."""

    ref: str
    run_id: str | None
    run_name: str | None
    checkpoint: Path
    meta: dict
    sha256: str  # of model.pt
    checksums: str  # "verified": checksums.json matched; "computed": there was none

    @property
    def label(self) -> str:
        return f"run {self.run_id}" if self.run_id else f"checkpoint {self.checkpoint}"


def resolve(ref: str, which: str, uri: str) -> Member:
    """RUN (id or unique name) or CHECKPOINT (directory) -> Member, checksums checked."""
    if which not in CHOICES:
        raise CheckpointError(f"--checkpoint {which}: must be one of {', '.join(CHOICES)}")
    path = Path(ref).expanduser()
    if path.is_dir():
        run_dir = not (path / META_FILE).exists() and list_checkpoints(str(path))
        checkpoint = pick(str(path), which, str(path)) if run_dir else path
        run = _run_of_checkpoint(checkpoint, uri)
    else:
        if os.sep in ref:
            raise CheckpointError(f"{ref}: no such checkpoint directory")
        run = find_run(uri, ref)
        checkpoint = run_checkpoint(run, which)
    checkpoint = checkpoint.resolve()
    meta = read_meta(checkpoint)
    sha256, status = verify_checksums(checkpoint)
    return Member(
        ref, run.info.run_id if run else None, run.info.run_name if run else None, checkpoint, meta, sha256, status
    )


def run_checkpoint(run, which: str) -> Path:
    """The run's best or latest checkpoint directory."""
    tags = run.data.tags
    run_id = run.info.run_id
    root = tags.get("orch.checkpoint_dir")
    if root and "://" in root:
        raise CheckpointError(
            f"run {run_id} keeps its checkpoints at {root}: copy the one to evaluate "
            "to a local directory and pass that path"
        )
    if root and list_checkpoints(root):
        return pick(root, which, f"run {run_id}")
    # Runs recorded before orch.checkpoint_dir existed name their checkpoints directly.
    fallback = tags.get("orch.best_checkpoint" if which == "best" else "orch.latest_checkpoint")
    if fallback and Path(fallback).is_dir():
        return Path(fallback)
    where = f" (orch.checkpoint_dir {root} holds none)" if root else " (it has no orch.checkpoint_dir tag)"
    raise CheckpointError(f"run {run_id} has no checkpoint{where}")


def pick(root: str, which: str, owner: str) -> Path:
    """best or latest among root's epoch_NNNN/ directories that hold a meta.json."""
    found = [(epoch_of(loc), Path(loc)) for loc in list_checkpoints(root)]
    found = [(epoch, d) for epoch, d in found if (d / META_FILE).exists()]
    if not found:
        raise CheckpointError(f"{owner} has no checkpoint with a {META_FILE} under {root}")
    if which == "latest":
        return max(found)[1]
    scored = []
    for epoch, d in found:
        error = read_meta(d).get("metrics", {}).get("val_top1_error")
        if error is not None:
            scored.append((float(error), -epoch, d))
    if not scored:
        raise CheckpointError(f"{owner}: no checkpoint under {root} records val_top1_error; use --checkpoint latest")
    return min(scored)[2]


def read_meta(checkpoint: Path) -> dict:
    if not (checkpoint / META_FILE).exists():
        raise CheckpointError(f"{checkpoint}: not a checkpoint directory (no {META_FILE})")
    if not (checkpoint / MODEL_FILE).exists():
        raise CheckpointError(f"{checkpoint}: checkpoint has no {MODEL_FILE}")
    try:
        meta = load_meta(checkpoint)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{checkpoint / META_FILE}: unreadable ({exc})") from None
    missing = [k for k in ("arch", "num_classes", "preprocess") if k not in meta]
    missing += [f"preprocess.{k}" for k in ("size", "mean", "std") if k not in meta.get("preprocess", {})]
    if missing:
        raise CheckpointError(f"{checkpoint / META_FILE}: missing {', '.join(missing)}")
    return meta


def verify_checksums(checkpoint: Path) -> tuple[str, str]:
    """(sha256 of model.pt, "verified" | "computed"). With a checksums.json every file it lists
    must match; without one (checkpoints written before it existed) the hash is computed."""
    if not (checkpoint / CHECKSUMS_FILE).exists():
        return sha256_file(checkpoint / MODEL_FILE), "computed"
    try:
        files = verify(str(checkpoint))
    except DamagedCheckpoint as exc:
        raise CheckpointError(f"{exc}: the checkpoint is damaged; evaluate another one") from None
    return files.get(MODEL_FILE) or sha256_file(checkpoint / MODEL_FILE), "verified"


def _run_of_checkpoint(checkpoint: Path, uri: str):
    """The run whose orch.checkpoint_dir holds this checkpoint, if the store knows exactly one."""
    if not store_exists(uri):
        return None
    roots = {os.path.abspath(checkpoint.parent), str(checkpoint.resolve().parent)}
    runs = [r for r in list_runs(uri) if r.data.tags["orch.checkpoint_dir"].rstrip("/") in roots]
    return runs[0] if len(runs) == 1 else None
