"""Loader benchmark: FFCV (.beton) against torchvision ImageFolder + DataLoader on the same JPEGs.

    .venv/bin/python bench/loader.py [--images 2000] [--batch-size 64] [--workers 2] [--res 160]
                                     [--cache DIR] [--max-resolution 256] [--write-mode proportion]

Generates ImageNet-like JPEGs (300-500 px, smooth content plus noise, a handful of classes),
writes them to a .beton with the printed writer parameters, then reads both ways with the
same augmentation (RandomResizedCrop to --res, horizontal flip, uint8 NCHW output), batch
size and worker count. One warm-up epoch per loader is excluded; the timed epochs alternate
between the loaders so that other load on a shared machine hits them alike. The last line
is `ratio: X`, FFCV's images/s over torchvision's. A line before it gives the cost of orch's
reproducible draws (data_pipeline.augment: the same crop and flip keyed by seed, epoch and
image) against FFCV's own stages in the same pipeline: `keyed draws: X of FFCV's images/s`.

On a few cores FFCV's gain comes from what the .beton stores (smaller images, half of them
raw pixels), not from decoding the same JPEGs faster: the parameters are part of the result.
"""

import argparse
import os
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000, help="JPEGs to generate")
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--res", type=int, default=160, help="training resolution (RandomResizedCrop output side)")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per loader after a warm-up epoch")
    p.add_argument("--cache", type=Path, default=None, help="keep images and .beton here between runs")
    p.add_argument("--max-resolution", type=int, default=256, help="writer: longest side stored")
    p.add_argument("--write-mode", default="proportion", choices=["proportion", "jpg", "raw", "smart"])
    p.add_argument("--compress-probability", type=float, default=0.5)
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--skip-orch-loader", action="store_true", help="skip the extra build_train_loader figure")
    return p.parse_args(argv)


def _make_jpeg(task) -> int:
    """A smooth random scene (upsampled coarse colours) with mild noise, like a photo's statistics."""
    path, seed = task
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = (int(v) for v in rng.integers(300, 501, size=2))
    coarse = Image.fromarray(
        rng.integers(0, 256, size=(int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3), dtype=np.uint8)
    )
    image = np.asarray(coarse.resize((w, h), Image.BICUBIC), dtype=np.int16)
    image = np.clip(image + rng.normal(0, 12, size=image.shape), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(path, quality=90)
    return path.stat().st_size


def generate_images(root: Path, n: int, classes: int, workers: int) -> int:
    """n JPEGs in root/class_k/; returns their total bytes. Reuses a complete earlier set."""
    done = root / ".complete"
    if done.exists() and done.read_text() == f"{n} {classes}":
        return sum(f.stat().st_size for f in root.rglob("*.jpg"))
    tasks = []
    for i in range(n):
        folder = root / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        tasks.append((folder / f"{i:06d}.jpg", i))
    with Pool(workers) as pool:
        total = sum(pool.imap_unordered(_make_jpeg, tasks, chunksize=32))
    done.write_text(f"{n} {classes}")
    return total


def write_beton_for(root: Path, beton: Path, options) -> None:
    from data_pipeline.beton import page_size_for, write_beton
    from data_pipeline.imagefolder import ImageFiles, scan_split

    if beton.exists():
        return
    _, samples = scan_split(root, "--images")
    tmp = beton.with_name(f".{beton.name}.partial")
    write_beton(
        tmp,
        ImageFiles(samples, options.max_resolution),
        options.image_field(),
        workers=options.workers,
        desc="writing .beton",
        page_size=page_size_for(3 * options.max_resolution**2),
    )
    os.replace(tmp, beton)


def time_alternating(loaders: dict, epochs: int) -> dict:
    """images/s per loader: one warm-up epoch each, then timed epochs taken in turns, so that
    load from other processes on a shared machine falls on every loader alike."""
    for loader in loaders.values():
        for _ in loader:
            pass
    counts = dict.fromkeys(loaders, 0)
    seconds = dict.fromkeys(loaders, 0.0)
    for _ in range(epochs):
        for name, loader in loaders.items():
            start = time.perf_counter()
            for images, _ in loader:
                counts[name] += len(images)
            seconds[name] += time.perf_counter() - start
    return {name: counts[name] / seconds[name] for name in loaders}


def ffcv_loader(beton: Path, args, keyed: bool = False):
    """FFCV's own Loader: RandomResizedCrop and flip in the decoder pipeline, uint8 NCHW out;
    keyed: orch's stages of the same crop and flip (data_pipeline.augment) in their place."""
    from data_pipeline.ffcv_compat import import_ffcv

    import_ffcv()
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

    from data_pipeline import geometry
    from data_pipeline.augment import Flip, crop_decoder

    if keyed:
        area, aspect = geometry.IMAGENET_AREA, geometry.IMAGENET_ASPECT
        crop_and_flip = [crop_decoder((args.res, args.res), geometry.imagenet_crop, area, aspect), Flip()]
    else:
        crop_and_flip = [RandomResizedCropRGBImageDecoder((args.res, args.res)), RandomHorizontalFlip()]
    return Loader(
        str(beton),
        batch_size=args.batch_size,
        num_workers=args.workers,
        order=OrderOption.RANDOM,
        seed=0,
        drop_last=True,
        pipelines={
            "image": [*crop_and_flip, ToTensor(), ToTorchImage()],
            "label": [IntDecoder(), ToTensor(), Squeeze(1)],
        },
    )


def orch_loader(beton: Path, args):
    """The training loop's own loader: the same crop and flip, then normalized float32."""
    from data_pipeline import ResolutionSchedule, build_train_loader

    return build_train_loader(
        beton,
        augment="imagenet",
        batch_size=args.batch_size,
        num_workers=args.workers,
        seed=0,
        mean=(124.0, 116.0, 104.0),
        std=(58.0, 57.0, 57.0),
        resolution=ResolutionSchedule(args.res, args.res, 0, 0),
    )


def torchvision_loader(root: Path, args):
    import torch
    from torchvision import datasets, transforms

    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(args.res),
            transforms.RandomHorizontalFlip(),
            transforms.PILToTensor(),
        ]
    )
    return torch.utils.data.DataLoader(
        datasets.ImageFolder(str(root), transform=transform),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
        persistent_workers=args.workers > 0,
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    from data_pipeline.imagefolder import WriterOptions

    options = WriterOptions(
        max_resolution=args.max_resolution,
        write_mode=args.write_mode,
        compress_probability=args.compress_probability,
        jpeg_quality=args.jpeg_quality,
        workers=args.workers,
    )
    with tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp:
        cache = args.cache or Path(tmp)
        root = cache / f"jpegs-{args.images}-{args.classes}"
        jpeg_bytes = generate_images(root, args.images, args.classes, args.workers)
        beton = cache / (
            f"bench-{args.images}-{args.classes}-{args.write_mode}-{args.max_resolution}-"
            f"{args.compress_probability:g}-q{args.jpeg_quality}.beton"
        )
        write_beton_for(root, beton, options)

        print(
            f"images: {args.images} JPEGs of 300-500 px in {args.classes} classes, "
            f"{jpeg_bytes / 2**20:.1f} MiB; .beton {beton.stat().st_size / 2**20:.1f} MiB"
        )
        print(
            f"writer: write_mode={options.write_mode} max_resolution={options.max_resolution} "
            f"compress_probability={options.compress_probability:g} jpeg_quality={options.jpeg_quality}"
        )
        print(
            f"loading: RandomResizedCrop {args.res} + flip, uint8, batch {args.batch_size}, "
            f"{args.workers} workers, {args.epochs} timed epochs each after 1 warm-up; {os.cpu_count()} CPUs"
        )
        loaders = {
            "torchvision": torchvision_loader(root, args),
            "ffcv": ffcv_loader(beton, args),
            "keyed": ffcv_loader(beton, args, keyed=True),
        }
        if not args.skip_orch_loader:
            loaders["orch"] = orch_loader(beton, args)
        rates = time_alternating(loaders, args.epochs)
        print(f"torchvision ImageFolder + DataLoader (original JPEGs): {rates['torchvision']:,.0f} images/s")
        print(f"ffcv Loader (.beton): {rates['ffcv']:,.0f} images/s")
        print(f"ffcv Loader with orch's keyed crop and flip (.beton): {rates['keyed']:,.0f} images/s")
        if "orch" in rates:
            print(f"orch build_train_loader (.beton, then normalized float32): {rates['orch']:,.0f} images/s")
        print(f"keyed draws: {rates['keyed'] / rates['ffcv']:.2f} of FFCV's images/s")
        print(f"ratio: {rates['ffcv'] / rates['torchvision']:.2f}")


if __name__ == "__main__":
    main()
