"""Fashion-MNIST from its IDX .gz files to train.beton (60,000) and val.beton (10,000)."""

import gzip
import os
from pathlib import Path

import numpy as np

from data_pipeline.beton import write_beton
from data_pipeline.ffcv_compat import import_ffcv
from data_pipeline.info import CLASSES_FILE, INFO_FILE, ChannelStats, dataset_json
from data_pipeline.staging import StagedOutput
from orchestrator.errors import DataError

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # uint8 data with 3 or 1 dimensions


class GrayAsRGB:
    """(N, H, W) uint8 images and labels as FFCV writer items: (H, W, 3) with equal channels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return np.repeat(self.images[i][:, :, None], 3, axis=2), int(self.labels[i])


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of uint8 values (images: ndim=3, labels: ndim=1), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(
            f"{path}: unreadable ({exc}); re-install it: apt-get install --reinstall dataset-fashion-mnist"
        ) from None
    magic = int.from_bytes(data[:4], "big")
    if len(data) < 4 + 4 * ndim or magic != _IDX_MAGIC[ndim]:
        raise DataError(f"{path}: not an IDX file of {ndim}-D uint8 data (magic {magic:#010x})")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    values = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if values.size != int(np.prod(shape)):
        raise DataError(f"{path}: holds {values.size} values, its header says {shape}; the file is truncated")
    return values.reshape(shape)


def load_split(source: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_file, label_file = (Path(source) / name for name in FILES[split])
    for path in (image_file, label_file):
        if not path.is_file():
            raise DataError(
                f"{path}: missing; install Fashion-MNIST (apt-get install dataset-fashion-mnist) "
                "or pass --source DIR holding the four IDX .gz files"
            )
    images, labels = read_idx(image_file, 3), read_idx(label_file, 1)
    if len(images) != len(labels):
        raise DataError(f"{image_file}: {len(images)} images but {label_file.name} has {len(labels)} labels")
    return images, labels


def write_fashion_mnist(
    source=DEFAULT_SOURCE, out="data/fashion-mnist", *, limit_train: int | None = None, workers: int | None = None
) -> dict:
    """Write OUT/train.beton, OUT/val.beton, classes.json and dataset.json; returns dataset.json's content.

    Images are stored raw (28x28, the gray value in all 3 channels); mean and std are computed
    over every written training image.
    """
    if limit_train is not None and limit_train < 1:
        raise DataError(f"--limit-train {limit_train}: must be at least 1")
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise DataError(
            f"--source {source}: no such folder; install Fashion-MNIST "
            "(apt-get install dataset-fashion-mnist) or pass the folder of its IDX .gz files"
        )
    splits = {split: load_split(source, split) for split in FILES}
    if limit_train is not None:
        splits["train"] = tuple(a[:limit_train] for a in splits["train"])
    workers = workers or min(2, os.cpu_count() or 1)

    import_ffcv()
    from ffcv.fields import RGBImageField

    stats = ChannelStats()
    stats.add(splits["train"][0][..., None])
    info = dataset_json(
        "fashion-mnist",
        CLASSES,
        stats,
        28,
        len(splits["train"][0]),
        len(splits["val"][0]),
        writer={
            "kind": "fashion-mnist",
            "source": str(source),
            "write_mode": "raw",
            "max_resolution": None,
            "limit_train": limit_train,
        },
    )
    with StagedOutput(out) as staged:
        for split, (images, labels) in splits.items():
            write_beton(
                staged.path(f"{split}.beton"),
                GrayAsRGB(images, labels),
                RGBImageField(write_mode="raw"),
                workers=workers,
                desc=f"{split}.beton",
                chunksize=1000,
            )
        staged.write_json(CLASSES_FILE, CLASSES)
        staged.write_json(INFO_FILE, info)
        staged.commit()
    return info
