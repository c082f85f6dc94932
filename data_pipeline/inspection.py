"""What a .beton holds, read from its metadata table (no image is decoded)."""

from pathlib import Path

import numpy as np

from data_pipeline.beton import image_and_label_fields, open_reader
from data_pipeline.ffcv_compat import IMAGE_MODES, field_metadata, fields


def inspect_beton(path) -> dict:
    path = Path(path)
    reader = open_reader(path)
    image_field, label_field = image_and_label_fields(reader, path)
    images = field_metadata(reader, image_field)
    labels = field_metadata(reader, label_field)
    modes = {name: int(np.count_nonzero(images["mode"] == code)) for code, name in IMAGE_MODES.items()}
    return {
        "path": str(path),
        "num_samples": int(reader.num_samples),
        "num_classes": int(len(np.unique(labels))),
        "label_range": [int(labels.min()), int(labels.max())] if len(labels) else None,
        "fields": {name: type(handler).__name__ for name, handler in fields(reader).items()},
        "height": _min_median_max(images["height"]),
        "width": _min_median_max(images["width"]),
        **side_summary(images),
        "stored_as": {name: count for name, count in modes.items() if count},
        "size_bytes": path.stat().st_size,
        "page_size": int(reader.page_size),
    }


def side_summary(images: np.ndarray) -> dict:
    """{"short_side", "long_side"}: min, median and max over the images' metadata. The shorter
    side is what a resize to a shorter side (validation's res/0.875, 10-crop, the paper's scale
    augmentation) reads."""
    return {
        "short_side": _min_median_max(np.minimum(images["height"], images["width"])),
        "long_side": _min_median_max(np.maximum(images["height"], images["width"])),
    }


def _min_median_max(values: np.ndarray) -> dict | None:
    if not len(values):
        return None
    return {"min": int(values.min()), "median": float(np.median(values)), "max": int(values.max())}


def _sides_line(name: str, sides: dict) -> str:
    return f"{name + ':':<13}min {sides['min']}, median {sides['median']:g}, max {sides['max']}"


def format_inspection(report: dict) -> str:
    h, w = report["height"], report["width"]
    lines = [
        f"file:        {report['path']}",
        f"samples:     {report['num_samples']:,}",
        f"classes:     {report['num_classes']} (labels {report['label_range'][0]}-{report['label_range'][1]})"
        if report["label_range"]
        else "classes:     0",
        "fields:      " + ", ".join(f"{n} ({t})" for n, t in report["fields"].items()),
    ]
    if h:
        lines += [
            f"height:      min {h['min']}, median {h['median']:g}, max {h['max']}",
            f"width:       min {w['min']}, median {w['median']:g}, max {w['max']}",
            _sides_line("short side", report["short_side"]),
            _sides_line("long side", report["long_side"]),
        ]
    lines += [
        "stored as:   " + ", ".join(f"{n} {c:,}" for n, c in report["stored_as"].items()),
        f"size:        {report['size_bytes'] / 2**20:,.1f} MiB",
    ]
    return "\n".join(lines)
