"""Checkpoints as plain data in a directory, every file loadable with weights_only=True.

    model.pt         the unwrapped model's state_dict
    train_state.pt   optimizer, grad scaler, epoch, global step, seed
    meta.json        arch, classes, epoch, metrics, the resolved spec, preprocessing
    checksums.json   sha256 of each file above, written last

Each file is written under a temporary name and renamed, so a reader never sees half a file;
checksums.json comes last, so a checkpoint without it, or whose files do not match it, was
cut short or damaged afterwards (a truncated upload, a full disk) and must not be loaded.

A run's checkpoints are the directories of its storage folder named `epoch_NNNN` (written at
the end of epoch NNNN) and `epoch_NNNN_step_SSSSSS` (written within epoch NNNN after SSSSSS of
its batches: on preemption, `orch stop --save` or checkpoint.every_n_steps). The folder may be
a local path or a pyarrow-supported URI (s3://, gs://): listing and hashing go through pyarrow.
"""

import hashlib
import json
import os
import re
from pathlib import Path

import pyarrow.fs as pafs

MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"
META_FILE = "meta.json"
CHECKSUMS_FILE = "checksums.json"
_CHECKPOINT_DIR = re.compile(r"epoch_(\d+)(?:_step_(\d+))?")


class DamagedCheckpoint(Exception):
    """A checkpoint's files are missing or do not match its checksums.json."""


def save_checkpoint(directory, model_state: dict, train_state: dict, meta: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_torch_save(model_state, directory / MODEL_FILE)
    _atomic_torch_save(train_state, directory / STATE_FILE)
    _atomic_write_text(directory / META_FILE, json.dumps(meta, indent=2, sort_keys=True))
    files = {name: sha256_file(directory / name) for name in (MODEL_FILE, STATE_FILE, META_FILE)}
    _atomic_write_text(directory / CHECKSUMS_FILE, json.dumps({"algorithm": "sha256", "files": files}, indent=2))
    return directory


def load_model_state(directory, map_location="cpu") -> dict:
    import torch  # here: Ray Train's controller imports this module (restart.py) and needs no torch

    return torch.load(Path(directory) / MODEL_FILE, map_location=map_location, weights_only=True)


def load_train_state(directory, map_location="cpu") -> dict:
    import torch

    return torch.load(Path(directory) / STATE_FILE, map_location=map_location, weights_only=True)


def load_meta(directory) -> dict:
    return json.loads((Path(directory) / META_FILE).read_text())


def sha256_file(path) -> str:
    return _sha256_stream(open(path, "rb"))


def verify(location: str, fs: pafs.FileSystem | None = None) -> dict:
    """{file: sha256} of a checkpoint whose files all match its checksums.json; else DamagedCheckpoint."""
    fs, path = open_location(location, fs)
    try:
        with fs.open_input_stream(f"{path}/{CHECKSUMS_FILE}") as f:
            expected = json.loads(f.read().decode())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DamagedCheckpoint(
            f"{location}: no readable {CHECKSUMS_FILE} ({type(exc).__name__}); it was not written to the end"
        ) from None
    for name, digest in expected.items():
        try:
            actual = _sha256_stream(fs.open_input_stream(f"{path}/{name}"))
        except OSError:
            raise DamagedCheckpoint(f"{location}/{name}: missing") from None
        if actual != digest:
            raise DamagedCheckpoint(
                f"{location}/{name}: sha256 {actual[:12]}... does not match {CHECKSUMS_FILE} ({digest[:12]}...)"
            )
    return expected


def data_layout(spec, world_size: int) -> dict:
    """Which samples a rank's trained batches hold, under a job spec with `world_size` workers:
    what a step checkpoint records (meta.json's layout) and a restore compares."""
    return {"world_size": world_size, "batch_size": spec.training.batch_size, "seed": spec.training.seed}


def layout_mismatch(meta: dict, layout: dict) -> str | None:
    """Why a step checkpoint's progress does not carry over to a worker group of `layout`
    ({world_size, batch_size, seed}: which samples each rank's trained batches held), or None.
    Its meta.json records the layout that wrote it; one written without that record cannot be
    checked, so it does not carry over either."""
    recorded = meta.get("layout")
    if not recorded:
        return "its meta.json does not say which world size, batch and seed wrote it"
    labels = {"world_size": "workers", "batch_size": "images per worker", "seed": "data order seed"}
    changed = [
        f"{recorded.get(key)} -> {layout[key]} {label}"
        for key, label in labels.items()
        if recorded.get(key) != layout[key]
    ]
    return f"written with other data shards ({', '.join(changed)})" if changed else None


def checkpoint_name(epoch: int, step: int | None = None) -> str:
    """The folder name of epoch's end-of-epoch checkpoint, or of one after `step` of its batches."""
    return f"epoch_{epoch:04d}" if step is None else f"epoch_{epoch:04d}_step_{step:06d}"


def position_of(location: str) -> tuple[int, float] | None:
    """(epoch, batches of it trained) for a checkpoint's location, inf for an end-of-epoch one,
    so that positions sort in training order; None for a folder that is not a checkpoint."""
    match = _CHECKPOINT_DIR.fullmatch(location.rstrip("/").rsplit("/", 1)[-1])
    if not match:
        return None
    return int(match.group(1)), float("inf") if match.group(2) is None else int(match.group(2))


def epoch_of(location: str) -> int | None:
    position = position_of(location)
    return None if position is None else position[0]


def is_step_checkpoint(location: str) -> bool:
    position = position_of(location)
    return position is not None and position[1] != float("inf")


def list_checkpoints(run_dir: str, fs: pafs.FileSystem | None = None, *, steps: bool = True) -> list[str]:
    """The run's checkpoint locations in training order (same form as run_dir); steps=False
    leaves out the step checkpoints (evaluation ranks whole epochs)."""
    fs, path = open_location(run_dir, fs)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError:
        return []
    names = [i.base_name for i in infos if i.type == pafs.FileType.Directory and position_of(i.base_name) is not None]
    if not steps:
        names = [n for n in names if not is_step_checkpoint(n)]
    return [f"{run_dir.rstrip('/')}/{n}" for n in sorted(names, key=position_of)]


def latest_good(run_dir: str, fs: pafs.FileSystem | None = None, newest: str | None = None):
    """(newest checkpoint that verifies, or None; [(damaged location, why), ...] newer than it).

    `newest`: a checkpoint location; only it and the ones before it are considered."""
    bound = position_of(newest) if newest else None
    damaged = []
    for location in reversed(list_checkpoints(run_dir, fs)):
        if bound is not None and position_of(location) > bound:
            continue
        try:
            verify(location, fs)
            return location, damaged
        except DamagedCheckpoint as exc:
            damaged.append((location, str(exc)))
    return None, damaged


def describe(location: str, fs: pafs.FileSystem | None = None) -> dict:
    """What `orch checkpoints` shows: path, epoch, metrics, size, model checksum and whether it verifies."""
    fs, path = open_location(location, fs)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    entry = {
        "path": location,
        "epoch": epoch_of(location),
        "step": position_of(location)[1] if is_step_checkpoint(location) else None,
        "metrics": {},
        "size_bytes": sum(i.size or 0 for i in infos if i.type == pafs.FileType.File),
    }
    try:
        with fs.open_input_stream(f"{path}/{META_FILE}") as f:
            entry["metrics"] = json.loads(f.read().decode()).get("metrics", {})
    except (OSError, ValueError):
        pass
    try:
        entry["sha256"] = verify(path, fs).get(MODEL_FILE)
        entry["status"] = "ok"
    except DamagedCheckpoint as exc:
        entry["sha256"], entry["status"], entry["problem"] = None, "damaged", str(exc)
    return entry


def open_location(location: str, fs: pafs.FileSystem | None = None) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem and path for a checkpoint location: a local path (made absolute) or
    a URI (s3://, gs://, file://, ...) opened with FileSystem.from_uri, as Ray Train opens its
    storage_path; with `fs` given, the location is already a path on it."""
    if fs is not None:
        return fs, location.rstrip("/")
    if "://" not in location:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))
    return pafs.FileSystem.from_uri(location)


def _sha256_stream(stream) -> str:
    digest = hashlib.sha256()
    with stream as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_torch_save(obj, path: Path) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
