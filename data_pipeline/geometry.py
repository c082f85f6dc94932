"""Where every pipeline's pixels come from: the crop geometry of training, validation, 10-crop,
multi-scale and ensemble inputs, in one module (as torchvision's references keep theirs in
presets.py). The FFCV loaders (data_pipeline.loaders) and test-time augmentation
(orchestrator.evaluation.tta) read these values and functions; none of them defines its own.

A box is (top, left, height, width) in the stored image's pixels; the loader resizes the box
to the output side. Resizing the whole image first and cutting after gives the same pixels up
to interpolation, which is how the paper states its recipes.

Training
  imagenet  torchvision's recipe: RandomResizedCrop (area 8%-100% of the image, aspect ratio
            3/4-4/3) to the epoch's resolution, horizontal flip.
  paper     section 3.4 of He et al. (2015): the shorter side resized to a random length in
            [256, 480], a random 224x224 crop, horizontal flip, and AlexNet's PCA lighting noise
            (Krizhevsky et al. 2012, section 4.1). The bounds are for the paper's 224 crop and
            scale with the crop (a 160 crop draws its shorter side from [183, 343]).
  cifar     4 black pixels of padding on each side, a random crop at the stored size, flip.
Validation (imagenet and paper): the shorter side resized to val_res / 0.875 (256 for 224) and
  the center val_res x val_res crop; cifar: the stored image.
Test-time views: see orchestrator.evaluation.tta, built on the functions here.

Random boxes are drawn from an image's key (data_pipeline.rng): one image gets one box per epoch
and seed, whichever loader thread cuts it.
"""

import numpy as np

from data_pipeline.rng import uniform

VAL_CROP_RATIO = 0.875  # validation: shorter side to res / 0.875, then the center res x res
CIFAR_PADDING = 4
IMAGENET_AREA = (0.08, 1.0)  # RandomResizedCrop's share of the image's area
IMAGENET_ASPECT = (3 / 4, 4 / 3)
PAPER_CROP = 224  # the crop side the paper's bounds below are given for
PAPER_SHORT_SIDE = (256, 480)  # section 3.4's scale augmentation
PAPER_TEST_SCALES = (224, 256, 384, 480, 640)  # Table 4's shorter sides, for a 224 test crop
# AlexNet's PCA of ImageNet's RGB pixels (0-1 scale), as fb.resnet.torch applies it.
LIGHTING_EIGVAL = (0.2175, 0.0188, 0.0045)
LIGHTING_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
PAPER_LIGHTING_STD = 0.1


def val_resize_side(res: int) -> int:
    """The shorter side validation resizes to before its center res x res crop (224 -> 256)."""
    return round(res / VAL_CROP_RATIO)


def eval_style(augment: str) -> str:
    """How a checkpoint is fed at test time: 'cifar' (stored images) or 'imagenet' (resize and crop)."""
    return "cifar" if augment == "cifar" else "imagenet"


def center_crop(height, width, _, ratio, key=0):
    """The center square whose side is `ratio` of the shorter side: (top, left, side, side).
    With ratio 0.875 and the square resized to res, it is validation's view. The signature of
    data_pipeline.augment's crop functions: (height, width, scale, ratio, key); numba compiles it."""
    side = int(ratio * min(height, width))
    return (height - side) // 2, (width - side) // 2, side, side


def imagenet_crop(height, width, scale, ratio, key):
    """torchvision's RandomResizedCrop box: up to 10 tries at an area share drawn from `scale`
    and a log-uniform aspect ratio from `ratio`, each tried box placed uniformly; else the whole
    image cropped to the nearest allowed ratio. Draws 4t..4t+3 of the image's `key` (data_pipeline.rng)
    make try t."""
    area = height * width
    log_low, log_high = np.log(ratio[0]), np.log(ratio[1])
    for t in range(10):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * uniform(key, 4 * t))
        aspect = np.exp(log_low + (log_high - log_low) * uniform(key, 4 * t + 1))
        w = int(round(np.sqrt(target_area * aspect)))
        h = int(round(np.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(uniform(key, 4 * t + 2) * (height - h + 1))
            left = int(uniform(key, 4 * t + 3) * (width - w + 1))
            return top, left, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def paper_scale_crop(height, width, scale, _, key):
    """Section 3.4's random crop, as a box in the stored image: the shorter side is drawn
    uniformly from [scale[0], scale[1]] crop sides (256/224 and 480/224 for the paper), and
    a crop-side square at a uniformly drawn position is cut from the image so resized. The
    box is that square mapped back: side = shorter side / drawn scale. Draws 0-2 of the
    image's `key` (data_pipeline.rng); numba compiles it."""
    short = min(height, width)
    drawn = scale[0] + (scale[1] - scale[0]) * uniform(key, 0)
    side = min(short, max(1, int(round(short / drawn))))
    top = int(uniform(key, 1) * (height - side + 1))
    left = int(uniform(key, 2) * (width - side + 1))
    return top, left, side, side


def paper_scale_bounds(short_side_min: int, short_side_max: int) -> tuple[float, float]:
    """The paper's shorter-side bounds (pixels, for a PAPER_CROP crop) as multiples of the crop."""
    return short_side_min / PAPER_CROP, short_side_max / PAPER_CROP


def five_crop_corners(height: int, width: int, size: int) -> list[tuple[int, int]]:
    """(top, left) of 10-crop's four corner crops and its center crop, each size x size."""
    top, left = round((height - size) / 2), round((width - size) / 2)
    return [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size), (top, left)]


def tencrop_load_side(size: int) -> int:
    """10-crop and multi-scale load the center square of the whole shorter side at this side
    (256 for a 224 test size): the paper's resize before its crops."""
    return val_resize_side(size)


def multiscale_sides(size: int) -> tuple[int, ...]:
    """Table 4's shorter sides for a 224 test crop, scaled to this test size (224 -> 224, ..., 640)."""
    return tuple(dict.fromkeys(max(1, round(s * size / PAPER_CROP)) for s in PAPER_TEST_SCALES))
