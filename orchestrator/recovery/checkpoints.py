"""From what a user types (an MLflow run id, a unique run name, a directory or a URI) to a
checkpoint on this machine, its checksums checked.

A run's checkpoints are the `epoch_NNNN/` directories under its `orch.checkpoint_dir` tag.
`best` is chosen by the run's rule (orchestrator/recovery/best.py: its checkpoint.metric and mode); `latest`
the highest epoch. A directory holding meta.json is a checkpoint; one holding `epoch_NNNN/`
directories is treated like a run's checkpoint dir.

Storage is anything training writes to: a local path or shared filesystem, or a URI (s3://,
gs://, file://, ...) opened with pyarrow.fs.FileSystem.from_uri, as Ray Train opens its
storage_path. A checkpoint at a URI is listed and chosen where it lies, then downloaded to
$XDG_CACHE_HOME/orch/checkpoints/<sha256 of its run dir's URI>/epoch_NNNN (~/.cache by
default; written under a temporary name and renamed, so a copy there is whole) and verified
there like a local one. A cached copy is reused while it still matches its checksums.json.
"""

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow.fs as pafs

from orchestrator.errors import OrchError
from orchestrator.recovery.best import BestRule
from orchestrator.runs.run_lookup import find_run, list_runs, store_exists
from orchestrator.tags import BEST_CHECKPOINT_TAG, CHECKPOINT_DIR_TAG, LATEST_CHECKPOINT_TAG
from orchestrator.train.checkpoint import (
    CHECKSUMS_FILE,
    META_FILE,
    MODEL_FILE,
    DamagedCheckpoint,
    epoch_of,
    list_checkpoints,
    load_meta,
    open_location,
    sha256_file,
    verify,
)

CHOICES = ("best", "latest")


class CheckpointError(OrchError):
    """A run or checkpoint cannot be found, chosen or read."""


@dataclass(frozen=True)
class Member:
    """One resolved checkpoint and the run it belongs to (None for a checkpoint no run names)."""

    ref: str
    run_id: str | None
    run_name: str | None
    checkpoint: Path  # on this machine: the directory itself, or the downloaded copy of `source`
    meta: dict
    sha256: str  # of model.pt
    checksums: str  # "verified": checksums.json matched; "computed": there was none
    source: str  # where the checkpoint lives: its local path or its URI

    @property
    def label(self) -> str:
        return f"run {self.run_id}" if self.run_id else f"checkpoint {self.source}"


def is_uri(location: str) -> bool:
    return "://" in location


def resolve(ref: str, which: str, uri: str) -> Member:
    """RUN (id or unique name), CHECKPOINT (directory or URI) -> Member, checksums checked."""
    if which not in CHOICES:
        raise CheckpointError(f"--checkpoint {which}: must be one of {', '.join(CHOICES)}")
    path = Path(ref).expanduser()
    if is_uri(ref):
        source = _uri_checkpoint(ref, which)
        run = _run_of_checkpoint(source, uri)
    elif path.is_dir():
        run_dir = not (path / META_FILE).exists() and list_checkpoints(str(path))
        source = pick(str(path), which, str(path)) if run_dir else str(path)
        run = _run_of_checkpoint(source, uri)
    else:
        if os.sep in ref:
            raise CheckpointError(f"{ref}: no such checkpoint directory")
        run = find_run(uri, ref)
        source = run_checkpoint(run, which)
    if is_uri(source):
        checkpoint = fetch(source)
        try:
            meta, (sha256, status) = read_meta(checkpoint), verify_checksums(checkpoint)
        except CheckpointError as exc:  # leave no bad copy behind; name the URI, not the copy
            shutil.rmtree(checkpoint, ignore_errors=True)
            raise CheckpointError(str(exc).replace(str(checkpoint), source)) from None
    else:
        checkpoint = Path(source).resolve()
        source = str(checkpoint)
        meta, (sha256, status) = read_meta(checkpoint), verify_checksums(checkpoint)
    run_id, run_name = (run.info.run_id, run.info.run_name) if run else (None, None)
    return Member(ref, run_id, run_name, checkpoint, meta, sha256, status, source)


def run_checkpoint(run, which: str) -> str:
    """The run's best or latest checkpoint: a local directory or a URI."""
    tags = run.data.tags
    run_id = run.info.run_id
    root = tags.get(CHECKPOINT_DIR_TAG)
    if root and _listing(root):
        return pick(root, which, f"run {run_id}")
    # Runs recorded before orch.checkpoint_dir existed name their checkpoints directly.
    fallback = tags.get(BEST_CHECKPOINT_TAG if which == "best" else LATEST_CHECKPOINT_TAG)
    if fallback and not is_uri(fallback) and Path(fallback).is_dir():
        return fallback
    where = f" (orch.checkpoint_dir {root} holds none)" if root else " (it has no orch.checkpoint_dir tag)"
    raise CheckpointError(f"run {run_id} has no checkpoint{where}")


def pick(root: str, which: str, owner: str) -> str:
    """best or latest among root's epoch_NNNN/ directories (local or at a URI) that hold a
    meta.json; step checkpoints (mid-epoch, never validated) are for continuing training only."""
    fs, base = open_storage(root)
    found = []
    for path in list_checkpoints(base, fs, steps=False):
        if _file_type(fs, f"{path}/{META_FILE}", root) == pafs.FileType.File:
            found.append((epoch_of(path), path))
    if not found:
        raise CheckpointError(f"{owner} has no checkpoint with a {META_FILE} under {root}")

    def location(path: str) -> str:  # in root's own form: a URI stays a URI
        return f"{root.rstrip('/')}/{path.rsplit('/', 1)[-1]}"

    if which == "latest":
        return location(max(found)[1])
    metas = {path: _read_meta_at(fs, path, location(path)) for _, path in found}
    rule = BestRule.of(metas[max(found)[1]].get("spec", {}).get("checkpoint", {}))  # the run's own rule
    best = rule.pick([(epoch, metas[path].get("metrics", {}).get(rule.metric), path) for epoch, path in found])
    if best is None:
        raise CheckpointError(f"{owner}: no checkpoint under {root} records {rule.metric}; use --checkpoint latest")
    return location(best)


@lru_cache(maxsize=64)  # from_uri may ask the network (an S3 bucket's region): once per location
def open_storage(location: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem and path for a local path or a URI, resolved as Ray Train resolves its storage_path."""
    try:
        return open_location(location)
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid (unknown scheme) is a ValueError
        raise CheckpointError(f"{location}: cannot open ({_first_line(exc)})") from None


def fetch(source: str) -> Path:
    """A whole, local copy of the checkpoint directory at URI `source` (see the module docstring)."""
    fs, path = open_storage(source)
    parent, name = source.rstrip("/").rsplit("/", 1)
    copy = cache_root() / "checkpoints" / hashlib.sha256(parent.encode()).hexdigest()[:32] / name
    if copy.is_dir():
        try:
            if (copy / CHECKSUMS_FILE).exists():
                verify(str(copy))
            return copy
        except DamagedCheckpoint:  # damaged here since it was downloaded: download it again
            shutil.rmtree(copy, ignore_errors=True)
    partial = copy.with_name(f"{name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)  # copy_files makes the folders below it, not it
    try:
        pafs.copy_files(path, str(partial), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        os.replace(partial, copy)
    except (OSError, ValueError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if copy.is_dir():  # another command downloaded it meanwhile
            return copy
        raise CheckpointError(f"{source}: download failed ({_first_line(exc)})") from None
    return copy


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "orch"


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


def _uri_checkpoint(ref: str, which: str) -> str:
    """A checkpoint URI as it is, or a run dir URI's best or latest checkpoint."""
    fs, path = open_storage(ref)
    if _file_type(fs, f"{path.rstrip('/')}/{META_FILE}", ref) == pafs.FileType.File:
        return ref.rstrip("/")
    if list_checkpoints(path, fs):
        return pick(ref, which, ref)
    if _file_type(fs, path, ref) == pafs.FileType.NotFound:
        raise CheckpointError(f"{ref}: nothing there (no such checkpoint or run directory)")
    raise CheckpointError(f"{ref}: not a checkpoint (no {META_FILE}) and holds no epoch_NNNN checkpoints")


def _listing(root: str) -> list[str]:
    fs, base = open_storage(root)
    _file_type(fs, base, root)  # unreachable storage: an error naming it, not "holds none"
    return list_checkpoints(base, fs)


def _file_type(fs: pafs.FileSystem, path: str, location: str):
    try:
        return fs.get_file_info(path).type
    except OSError as exc:  # unreachable, no permission, no credentials
        raise CheckpointError(f"{location}: unreachable ({_first_line(exc)})") from None


def _read_meta_at(fs: pafs.FileSystem, path: str, location: str) -> dict:
    try:
        with fs.open_input_stream(f"{path}/{META_FILE}") as f:
            return json.loads(f.read().decode())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{location}/{META_FILE}: unreadable ({_first_line(exc)})") from None


def _run_of_checkpoint(source: str, uri: str):
    """The run whose orch.checkpoint_dir holds this checkpoint, if the store knows exactly one."""
    if not store_exists(uri):
        return None
    if is_uri(source):
        roots = {source.rstrip("/").rsplit("/", 1)[0]}
    else:
        checkpoint = Path(source)
        roots = {os.path.abspath(checkpoint.parent), str(checkpoint.resolve().parent)}
    runs = [r for r in list_runs(uri) if r.data.tags[CHECKPOINT_DIR_TAG].rstrip("/") in roots]
    return runs[0] if len(runs) == 1 else None


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
