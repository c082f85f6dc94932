"""Checkpoints as plain data in a directory, every file loadable with weights_only=True.

    model.pt        the unwrapped model's state_dict
    train_state.pt  optimizer, grad scaler, epoch, global step, seed
    meta.json       arch, classes, epoch, metrics, the resolved spec, preprocessing

Each file is written under a temporary name and renamed, so a reader never sees half a file.
"""

import json
import os
from pathlib import Path

import torch

MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"
META_FILE = "meta.json"


def save_checkpoint(directory, model_state: dict, train_state: dict, meta: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_torch_save(model_state, directory / MODEL_FILE)
    _atomic_torch_save(train_state, directory / STATE_FILE)
    _atomic_write_text(directory / META_FILE, json.dumps(meta, indent=2, sort_keys=True))
    return directory


def load_model_state(directory, map_location="cpu") -> dict:
    return torch.load(Path(directory) / MODEL_FILE, map_location=map_location, weights_only=True)


def load_train_state(directory, map_location="cpu") -> dict:
    return torch.load(Path(directory) / STATE_FILE, map_location=map_location, weights_only=True)


def load_meta(directory) -> dict:
    return json.loads((Path(directory) / META_FILE).read_text())


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
