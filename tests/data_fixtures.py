"""Helpers for the data pipeline tests: generated image folders, index datasets, CLI runs."""

from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from orchestrator.errors import OrchError


class IndexDataset:
    """n random (size x size) RGB images whose label is their own index."""

    def __init__(self, n: int, size: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], i


def write_index_beton(path: Path, n: int, size: int = 16) -> IndexDataset:
    from data_pipeline.beton import write_beton
    from data_pipeline.ffcv_compat import import_ffcv

    import_ffcv()  # first: it keeps ffcv from changing torch's thread count
    from ffcv.fields import RGBImageField

    dataset = IndexDataset(n, size)
    write_beton(path, dataset, RGBImageField(write_mode="raw"), workers=2, desc=path.name)
    return dataset


def make_image_folder(root: Path, classes=("ant", "bee", "cow"), per_class: int = 10, seed: int = 0) -> list[Path]:
    """JPEGs and PNGs of varied sizes, some grayscale, RGBA or palette; returns the files written."""
    rng = np.random.default_rng(seed)
    files = []
    for c in classes:
        folder = root / c
        folder.mkdir(parents=True)
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(24, 80, size=2))
            image = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
            image = {0: image.convert("L"), 1: image.convert("RGBA"), 2: image.convert("P")}.get(i, image)
            suffix = ".jpg" if i % 2 == 0 and image.mode in ("RGB", "L") else ".png"
            files.append(folder / f"img{i}{suffix}")
            image.save(files[-1])
    return files


def run_data_cli(*args: str) -> tuple[int, str, str]:
    """Run `orch data ARGS` as orchestrator.cli.main.main does: (exit code, stdout, stderr)."""
    from orchestrator.cli.data import data

    result = CliRunner().invoke(data, [str(a) for a in args])
    stderr = result.stderr
    if result.exception is None or isinstance(result.exception, SystemExit):
        return result.exit_code, result.stdout, stderr
    assert isinstance(result.exception, OrchError), f"not a user error: {result.exception!r}"
    return result.exception.exit_code, result.stdout, stderr + f"orch: error: {result.exception}\n"


def error_line(stderr: str) -> str:
    """The one `orch: error:` line of a failed run (and check there is exactly one, no traceback)."""
    lines = [line for line in stderr.splitlines() if line.startswith("orch: error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def stored_raw_image(beton: Path, index: int, shape=(28, 28, 3)) -> np.ndarray:
    """A raw-mode image's bytes, read straight from the file (no FFCV loader)."""
    from data_pipeline.beton import open_reader
    from data_pipeline.ffcv_compat import field_metadata

    meta = field_metadata(open_reader(beton), "image")[index]
    assert meta["mode"] == 1 and (meta["height"], meta["width"]) == shape[:2]
    return np.fromfile(beton, dtype=np.uint8, count=int(np.prod(shape)), offset=int(meta["data_ptr"])).reshape(shape)
