"""`orch data prepare imagefolder|fashion-mnist` and `orch data inspect FILE`."""

import click

from orchestrator.cli.options import emit_json, output_option

workers_option = click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Processes that decode and write images [default: this machine's CPUs].",
)


@click.group()
def data():
    """Write datasets as FFCV .beton files and inspect them."""


@data.group()
def prepare():
    """Write OUT/train.beton, OUT/val.beton, OUT/classes.json and OUT/dataset.json.

    Files appear under their final names only when everything is written.
    """


DEFAULT_MAX_RESOLUTION = 500  # ffcv-imagenet's write_imagenet.sh: 500, proportion, 0.50, q90


@prepare.command("imagefolder")
@click.option(
    "--train",
    "train_dir",
    required=True,
    type=click.Path(file_okay=True),
    help="Training images: one subfolder per class.",
)
@click.option(
    "--val", "val_dir", required=True, type=click.Path(file_okay=True), help="Validation images, same class subfolders."
)
@click.option("--out", required=True, type=click.Path(), help="Folder to write into (created if missing).")
@click.option(
    "--max-resolution",
    type=click.IntRange(min=8),
    default=DEFAULT_MAX_RESOLUTION,
    show_default=True,
    help="Bound on each image's LONGER side: larger images are shrunk, keeping their aspect, so "
    "that side is this many pixels. The default, ffcv-imagenet's, keeps a 500x375 ImageNet photo "
    "whole, so its shorter side stays 375 for the 256-pixel resize of validation, 10-crop and "
    "the paper's [256, 480] scale augmentation; 256 would store it at 256x192.",
)
@click.option(
    "--write-mode",
    type=click.Choice(["proportion", "jpg", "raw", "smart"]),
    default="proportion",
    show_default=True,
    help="proportion: JPEG with --compress-probability, else raw pixels.",
)
@click.option(
    "--compress-probability",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Share of images stored as JPEG in proportion mode.",
)
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=90, show_default=True)
@click.option(
    "--smart-threshold",
    type=click.IntRange(min=1),
    default=None,
    help="smart mode: JPEG for images above this many raw bytes (unset: all raw, as in FFCV).",
)
@workers_option
@click.option("--strict", is_flag=True, help="Fail on the first unreadable image instead of skipping it.")
@output_option
def prepare_imagefolder(
    train_dir,
    val_dir,
    out,
    max_resolution,
    write_mode,
    compress_probability,
    jpeg_quality,
    smart_threshold,
    workers,
    strict,
    output,
):
    """Image folders in the ImageNet layout (TRAIN/CLASS/IMAGE.jpg|png); class index = sorted folder name.

    Unreadable images are skipped with a warning naming each one (--strict: an error).
    """
    from data_pipeline.imagefolder import WriterOptions, default_workers, write_imagefolder

    options = WriterOptions(
        max_resolution=max_resolution,
        jpeg_quality=jpeg_quality,
        compress_probability=compress_probability,
        write_mode=write_mode,
        smart_threshold=smart_threshold,
        workers=workers or default_workers(),
    )
    summary = write_imagefolder(train_dir, val_dir, out, options, strict=strict)
    _print_summary(out, summary, output)


@prepare.command("fashion-mnist")
@click.option("--out", required=True, type=click.Path(), help="Folder to write into (created if missing).")
@click.option(
    "--source",
    type=click.Path(),
    default="/usr/share/datasets/fashion-mnist",
    show_default=True,
    help="Folder with the four IDX .gz files.",
)
@click.option("--limit-train", type=click.IntRange(min=1), default=None, help="Write only the first N training images.")
@workers_option
@output_option
def prepare_fashion_mnist(out, source, limit_train, workers, output):
    """Fashion-MNIST: 28x28 gray as 3 equal channels, stored raw; 60,000 train, 10,000 val."""
    from data_pipeline.fashion_mnist import write_fashion_mnist

    summary = write_fashion_mnist(source, out, limit_train=limit_train, workers=workers)
    _print_summary(out, summary, output)


@data.command("inspect")
@click.argument("file", type=click.Path())
@output_option
def inspect(file, output):
    """Samples, classes, fields, image sizes and size on disk of a .beton FILE."""
    from data_pipeline.inspection import format_inspection, inspect_beton

    report = inspect_beton(file)
    emit_json(report) if output == "json" else click.echo(format_inspection(report))


def _print_summary(out, summary: dict, output: str) -> None:
    skipped = summary.get("skipped", {"train": [], "val": []})
    if output == "json":
        emit_json(dict(summary, out=str(out)))
        return
    size = summary["image_size"]
    click.echo(
        f"wrote {out}: train.beton {summary['num_train']:,} images, val.beton {summary['num_val']:,} images, "
        f"{summary['num_classes']} classes, image size {f'{size}x{size}' if size else 'varies'}"
    )
    click.echo(f"mean {summary['mean']}  std {summary['std']}  (0-255, per channel; in {out}/dataset.json)")
    click.echo(f"skipped unreadable images: {len(skipped['train'])} train, {len(skipped['val'])} val")
