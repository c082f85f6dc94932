"""dataset.json: what the training loop needs to know about a written dataset."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.errors import DataError

INFO_FILE = "dataset.json"
CLASSES_FILE = "classes.json"


@dataclass(frozen=True)
class DatasetInfo:
    """Mean and std are per channel (R, G, B) on the 0-255 scale of the stored pixels."""

    name: str
    classes: list[str]
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int | None
    num_train: int
    num_val: int
    short_side: dict | None = None  # {"train"|"val": {"min", "median", "max"}}; older files lack it


class ChannelStats:
    """Running per-channel sums of uint8 RGB images, for mean and std on the 0-255 scale."""

    def __init__(self):
        self.sums = np.zeros(3)
        self.squares = np.zeros(3)
        self.count = 0

    def add(self, images: np.ndarray) -> None:
        """images: uint8 (..., 3) for RGB or (..., 1) for gray (the same value in every channel)."""
        pixels = images.reshape(-1, images.shape[-1])
        for start in range(0, len(pixels), 1 << 22):  # chunks bound the float64 copy to ~100 MB
            chunk = pixels[start : start + (1 << 22)].astype(np.float64)
            self.sums += chunk.sum(axis=0)
            self.squares += np.square(chunk).sum(axis=0)
            self.count += len(chunk)

    def merge(self, sums, squares, count) -> None:
        self.sums += sums
        self.squares += squares
        self.count += count

    def mean_std(self) -> tuple[list[float], list[float]]:
        mean = self.sums / self.count
        var = np.maximum(self.squares / self.count - np.square(mean), 0.0)
        return [round(float(m), 4) for m in mean], [round(float(s), 4) for s in np.sqrt(var)]


def dataset_json(
    name, classes, stats: ChannelStats, image_size, num_train, num_val, writer: dict, short_side: dict | None = None
) -> dict:
    mean, std = stats.mean_std()
    return {
        "name": name,
        "classes": list(classes),
        "num_classes": len(classes),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "mean": mean,
        "std": std,
        "image_size": image_size,
        "short_side": short_side,  # stored shorter sides per split: min, median, max
        "writer": writer,
    }


def read_dataset_info(beton_path) -> DatasetInfo:
    """The dataset.json next to a .beton (written by `orch data prepare`)."""
    path = Path(beton_path).parent / INFO_FILE
    fix = "`orch data prepare` writes it next to train.beton and val.beton"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: missing; {fix}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); {fix}") from None
    try:
        classes = [str(c) for c in raw["classes"]]
        info = DatasetInfo(
            name=str(raw["name"]),
            classes=classes,
            num_classes=int(raw["num_classes"]),
            mean=_triple(raw["mean"]),
            std=_triple(raw["std"]),
            image_size=None if raw.get("image_size") is None else int(raw["image_size"]),
            num_train=int(raw["num_train"]),
            num_val=int(raw["num_val"]),
            short_side=raw.get("short_side") if isinstance(raw.get("short_side"), dict) else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: bad or missing entry ({type(exc).__name__}: {exc}); {fix}") from None
    if info.num_classes != len(classes) or min(info.std) <= 0:
        raise DataError(f"{path}: inconsistent (num_classes vs classes, or std <= 0); {fix}")
    return info


def _triple(values) -> tuple[float, float, float]:
    if len(values) != 3:
        raise ValueError(f"expected 3 values (R, G, B), got {len(values)}")
    return tuple(float(v) for v in values)
