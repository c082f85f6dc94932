"""Image folders in the ImageNet layout (ROOT/CLASS/IMAGE.jpg|png) to train.beton and val.beton.

Every image is decoded once before writing: FFCV's writer cannot skip a sample (the count is
in the header), so unreadable files are found first, then skipped with a warning or, with
strict=True, reported as an error before anything is written.
"""

import os
import sys
import warnings
from dataclasses import asdict, dataclass, field
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from data_pipeline.beton import image_and_label_fields, open_reader, page_size_for, write_beton
from data_pipeline.ffcv_compat import field_metadata, import_ffcv, writer_resize
from data_pipeline.info import CLASSES_FILE, INFO_FILE, ChannelStats, dataset_json
from data_pipeline.inspection import side_summary
from data_pipeline.staging import StagedOutput, check_out_dir
from orchestrator.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
WRITE_MODES = ("proportion", "jpg", "raw", "smart")
STATS_SAMPLE = 2000  # training images that mean and std are computed from


def default_workers() -> int:
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class WriterOptions:
    """RGBImageField settings with ffcv-imagenet's meaning (its write_dataset.sh: proportion, q90)."""

    max_resolution: int = 500  # the longer side; 500 keeps ImageNet's typical 500x375 whole
    jpeg_quality: int = 90
    compress_probability: float = 0.5
    write_mode: str = "proportion"
    smart_threshold: int | None = None  # smart mode: JPEG above this many raw bytes (None: all raw)
    workers: int = field(default_factory=default_workers)

    def __post_init__(self):
        checks = [
            (self.max_resolution >= 8, f"--max-resolution {self.max_resolution}: must be at least 8"),
            (1 <= self.jpeg_quality <= 100, f"--jpeg-quality {self.jpeg_quality}: must be 1-100"),
            (0 <= self.compress_probability <= 1, f"--compress-probability {self.compress_probability}: must be 0-1"),
            (
                self.write_mode in WRITE_MODES,
                f"--write-mode {self.write_mode}: must be one of {', '.join(WRITE_MODES)}",
            ),
            (self.workers >= 1, f"--workers {self.workers}: must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise DataError(message)

    def image_field(self):
        import_ffcv()
        from ffcv.fields import RGBImageField

        return RGBImageField(
            write_mode=self.write_mode,
            max_resolution=self.max_resolution,
            smart_threshold=self.smart_threshold,
            jpeg_quality=self.jpeg_quality,
            compress_probability=self.compress_probability,
        )


def load_rgb(path, max_resolution: int | None = None) -> np.ndarray:
    """An image file as an (H, W, 3) uint8 array, decoding JPEGs at a reduced scale when that
    still leaves both sides at least max_resolution (the writer shrinks them to it anyway)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's EXIF and palette notes, once per file
        with Image.open(path) as image:
            if max_resolution:
                image.draft("RGB", (max_resolution, max_resolution))
            if image.mode == "P" and "transparency" in image.info:
                image = image.convert("RGBA")
            return np.asarray(image.convert("RGB"))


def scan_split(root: Path, flag: str, classes: list[str] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted folder names, or the given ones) and (file, class index) pairs."""
    if not root.exists():
        raise DataError(f"{flag} {root}: no such folder; pass a folder with one subfolder per class")
    if not root.is_dir():
        raise DataError(f"{flag} {root}: is a file; pass a folder with one subfolder per class")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise DataError(f"{flag} {root}: has no class subfolders; expected the ImageNet layout {root}/CLASS/IMAGE.jpg")
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(
            f"{flag} {root}: class folders {unknown} are not in the training set; "
            "use the same class folders for --train and --val"
        )
    samples = []
    for name in found:
        files = _image_files(root / name)
        if not files:
            raise DataError(
                f"{root / name}: class folder has no {'/'.join(IMAGE_SUFFIXES)} images; add images or remove the folder"
            )
        samples += [(f, classes.index(name)) for f in files]
    return classes, samples


def _image_files(folder: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        files += [Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(IMAGE_SUFFIXES)]
    return files


def _check(task):
    """(path, max_resolution, with_stats) -> (error or None, (sums, squares, count) or None)."""
    path, max_resolution, with_stats = task
    try:
        image = load_rgb(path, max_resolution)
    except Exception as exc:  # any decoder error means the file cannot be stored
        return " ".join(f"{type(exc).__name__}: {exc}".split()), None
    if not with_stats:
        return None, None
    stats = ChannelStats()
    stats.add(writer_resize(image, max_resolution))  # stats of what is stored
    return None, (stats.sums, stats.squares, stats.count)


def check_images(samples, options: WriterOptions, split: str, strict: bool, stats_for=frozenset()):
    """Decode every image; returns (readable samples, [{"path", "error"}] skipped, ChannelStats)."""
    tasks = [(str(path), options.max_resolution, i in stats_for) for i, (path, _) in enumerate(samples)]
    ok, skipped, stats = [], [], ChannelStats()
    pool = Pool(options.workers) if options.workers > 1 else None
    try:
        results = pool.imap(_check, tasks, chunksize=16) if pool else map(_check, tasks)
        for sample, (error, sums) in zip(
            samples, tqdm(results, total=len(tasks), desc=f"checking {split}", unit="img", file=sys.stderr)
        ):
            if error is None:
                ok.append(sample)
                if sums is not None:
                    stats.merge(*sums)
                continue
            if strict:
                raise DataError(
                    f"{sample[0]}: unreadable image ({error}); fix or remove it, "
                    "or leave out --strict to skip unreadable files"
                )
            skipped.append({"path": str(sample[0]), "error": error})
            tqdm.write(f"orch: warning: skipping unreadable image {sample[0]}: {error}", file=sys.stderr)
    finally:
        if pool:
            pool.terminate()
    return ok, skipped, stats


class ImageFiles:
    """Readable (path, label) pairs as FFCV writer items: (H, W, 3) uint8 array, label."""

    def __init__(self, samples, max_resolution: int):
        self.samples, self.max_resolution = samples, max_resolution

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return load_rgb(path, self.max_resolution), label


def write_imagefolder(train, val, out, options: WriterOptions | None = None, *, strict: bool = False) -> dict:
    """Write OUT/train.beton, val.beton, classes.json and dataset.json; returns dataset.json's
    content plus `skipped`: {"train": [{"path", "error"}], "val": [...]}."""
    options = options or WriterOptions()
    train, val, out = Path(train), Path(val), Path(out)
    classes, train_samples = scan_split(train, "--train")
    _, val_samples = scan_split(val, "--val", classes)
    check_out_dir(out)
    import_ffcv()

    rng = np.random.default_rng(0)
    sampled = rng.choice(len(train_samples), size=min(STATS_SAMPLE, len(train_samples)), replace=False)
    train_ok, train_skipped, stats = check_images(train_samples, options, "train", strict, frozenset(sampled.tolist()))
    val_ok, val_skipped, _ = check_images(val_samples, options, "val", strict)
    for root, ok, total in ((train, train_ok, train_samples), (val, val_ok, val_samples)):
        if not ok:
            raise DataError(f"{root}: none of its {len(total)} images could be read")
    if stats.count == 0:  # every sampled image was unreadable: take readable ones in order
        _, _, stats = check_images(train_ok[:STATS_SAMPLE], options, "stats", strict, frozenset(range(STATS_SAMPLE)))

    page_size = page_size_for(3 * options.max_resolution**2)
    with StagedOutput(out) as staged:
        paths = {}
        for split, samples in (("train", train_ok), ("val", val_ok)):
            paths[split] = staged.path(f"{split}.beton")
            write_beton(
                paths[split],
                ImageFiles(samples, options.max_resolution),
                options.image_field(),
                workers=options.workers,
                desc=f"{split}.beton",
                page_size=page_size,
            )
        writer = dict(
            asdict(options),
            kind="imagefolder",
            train=str(train),
            val=str(val),
            skipped={"train": len(train_skipped), "val": len(val_skipped)},
        )
        square, short_sides = _stored_sizes(paths)
        info = dataset_json(
            out.name or "imagefolder", classes, stats, square, len(train_ok), len(val_ok), writer, short_sides
        )
        staged.write_json(CLASSES_FILE, classes)
        staged.write_json(INFO_FILE, info)
        staged.commit()
    return dict(info, skipped={"train": train_skipped, "val": val_skipped})


def _stored_sizes(paths: dict) -> tuple[int | None, dict]:
    """(the common side when every stored image is square and of one size, else None;
    {split: {"min", "median", "max"} of the stored shorter sides})."""
    sides, short_sides = set(), {}
    for split, path in paths.items():
        reader = open_reader(path)
        meta = field_metadata(reader, image_and_label_fields(reader, path)[0])
        sides |= set(np.unique(meta["width"]).tolist()) | set(np.unique(meta["height"]).tolist())
        short_sides[split] = side_summary(meta)["short_side"]
    return (int(sides.pop()) if len(sides) == 1 else None), short_sides
