"""Test-time augmentation (the paper's section 3.4 and Table 4), cut from batches in torch.

A protocol turns one batch of images (NCHW, 0-255 floats, not yet normalized) into the views
a model scores; the member's score for an image is the mean of its views' softmax outputs.
Views are cut before normalization so that padding is black, as in training, and each
member of an ensemble normalizes them with its own mean and std.

Geometry, for a checkpoint whose test size is `size` (meta.json preprocess.size); the sides,
ratios and boxes come from data_pipeline.geometry, which the training loaders read too:

imagenet style (images of any size; training used `augment: imagenet` or `paper`)
  none        the training loop's validation view: the center 87.5% square of the shorter
              side, resized to size (resize to size/0.875, center-crop size).
  flip        that view and its mirror image.
  10crop      the paper's: the image resized so its shorter side is round(size/0.875) (256 for
              224), then the four corner crops and the center crop of size x size, and their
              mirrors. A batch needs one shape, so the loader keeps the center square of the
              shorter side (ratio 1.0): for square images exactly the paper's crops; for
              others the corners lie on the short sides' ends of that square. The center crop
              is the `none` view.
  multiscale  the paper's Table 4: fully convolutional (the nets end in adaptive average
              pooling) at several shorter sides. The center square, loaded at
              round(size/0.875), is resized with F.interpolate (bilinear, antialiased) to each
              scale. Default scales: the paper's 224, 256, 384, 480, 640 relative to its test
              size 224, i.e. round(s * size / 224); --scales gives pixel sides as they are.

cifar style (one fixed size; training used 4-pixel padding and random crops)
  none        the stored image.
  flip        it and its mirror.
  10crop      padded by 4 black pixels, the four corner crops and the center crop (the image
              itself) at the stored size, and their mirrors: the extreme translations that
              training's padding and random crops drew.
  multiscale  the stored image resized to each scale (default: as above, relative to 224).
"""

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from data_pipeline import geometry
from data_pipeline.geometry import CIFAR_PADDING, VAL_CROP_RATIO
from orchestrator.errors import OrchError

PROTOCOLS = ("none", "flip", "10crop", "multiscale")


@dataclass(frozen=True)
class Protocol:
    name: str
    style: str  # "imagenet" | "cifar": the checkpoint's training augmentation
    size: int  # test size: the crop side (imagenet) or the stored image side (cifar)
    scales: tuple[int, ...] = ()

    @property
    def num_views(self) -> int:
        return {"none": 1, "flip": 2, "10crop": 10}.get(self.name, len(self.scales))

    def load_geometry(self) -> tuple[int, float | None]:
        """(side, center-crop ratio) the loader delivers; ratio None: stored images as they are."""
        if self.style == "cifar":
            return self.size, None
        if self.name in ("none", "flip"):
            return self.size, VAL_CROP_RATIO
        return geometry.tencrop_load_side(self.size), 1.0

    def views(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        if self.name == "none":
            yield images
        elif self.name == "flip":
            yield from with_mirrors([images])
        elif self.name == "10crop":
            pad = CIFAR_PADDING if self.style == "cifar" else 0
            yield from with_mirrors(five_crops(images, self.size, pad))
        else:
            yield from rescaled(images, self.scales)

    def describe(self) -> dict:
        side, ratio = self.load_geometry()
        described = {
            "tta": self.name,
            "style": self.style,
            "size": self.size,
            "views": self.num_views,
            "load_side": side,
            "load_crop_ratio": ratio,
        }
        if self.name == "multiscale":
            described["scales"] = list(self.scales)
        return described


def make_protocol(name: str, preprocess: dict, scales: tuple[int, ...] | None = None) -> Protocol:
    """The protocol for a checkpoint's preprocess entry ({"size", "augment", ...})."""
    if name not in PROTOCOLS:
        raise OrchError(f"--tta {name}: must be one of {', '.join(PROTOCOLS)}")
    if scales and name != "multiscale":
        raise OrchError(f"--scales applies to --tta multiscale only, not --tta {name}")
    augment = preprocess.get("augment", "imagenet")
    if augment not in ("imagenet", "paper", "cifar"):
        raise OrchError(f"preprocess.augment {augment!r}: expected imagenet, paper or cifar")
    style = geometry.eval_style(augment)
    size = int(preprocess["size"])
    if name == "multiscale":
        scales = tuple(scales) if scales else default_scales(size)
    return Protocol(name, style, size, tuple(scales or ()))


def default_scales(size: int) -> tuple[int, ...]:
    """The paper's scales for a 224 test size, scaled to this one (224 -> 224, 256, ..., 640)."""
    return geometry.multiscale_sides(size)


def parse_scales(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        scales = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise OrchError(f"--scales {text}: expected comma-separated pixel sides, e.g. 224,256,384") from None
    if not scales or min(scales) < 8:
        raise OrchError(f"--scales {text}: give at least one side, each at least 8 pixels")
    return scales


def with_mirrors(views) -> Iterator[torch.Tensor]:
    for view in views:
        yield view
        yield view.flip(3)


def five_crops(images: torch.Tensor, size: int, pad: int = 0) -> list[torch.Tensor]:
    """Top-left, top-right, bottom-left, bottom-right and center size x size crops, after
    padding every side with `pad` zeros (black, since images are not yet normalized)."""
    if pad:
        images = F.pad(images, (pad, pad, pad, pad))
    h, w = images.shape[-2:]
    if size > min(h, w):
        raise OrchError(f"10crop: crops of {size} do not fit images of {h}x{w}")
    return [images[..., y : y + size, x : x + size] for y, x in geometry.five_crop_corners(h, w, size)]


def rescaled(images: torch.Tensor, scales) -> Iterator[torch.Tensor]:
    for side in scales:
        if tuple(images.shape[-2:]) == (side, side):
            yield images
        else:
            yield F.interpolate(images, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
