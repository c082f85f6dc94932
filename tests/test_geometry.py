"""The crop geometry of data_pipeline.geometry, checked through the real FFCV loaders against
plain per-image computations: the paper's scale augmentation (section 3.4), validation's
resize-and-center-crop, and AlexNet's lighting noise."""

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipeline import geometry
from data_pipeline.loaders import Lighting, build_train_loader, build_val_loader
from data_pipeline.rng import mix, normals, sample_key

SIZES = ((120, 200), (200, 150), (96, 96))  # (height, width) of the stored images, in turn
RAW = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


class GeneratedImages:
    """n images of SIZES in turn, their pixels `draw(index, height, width)`, labelled by index."""

    def __init__(self, n: int, draw):
        self.n, self.draw = n, draw

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        h, w = SIZES[i % len(SIZES)]
        return self.draw(i, h, w), i


def coordinate_pixels(i: int, h: int, w: int) -> np.ndarray:
    """Red is the column and green the row, as 0-255 ramps: a loaded crop tells which box of
    the stored image it came from, and whether it was mirrored."""
    y, x = np.mgrid[0:h, 0:w]
    ramp = np.stack([x * 255 / (w - 1), y * 255 / (h - 1), np.zeros_like(x, dtype=float)], -1)
    return ramp.round().astype(np.uint8)


def smooth_pixels(i: int, h: int, w: int) -> np.ndarray:
    """Low-frequency color waves: resampling them differently moves pixels by little, so a
    geometry error (a shifted or wrongly sized crop) stands out from interpolation."""
    y, x = np.mgrid[0:h, 0:w] / 25.0
    waves = [np.sin(x + i), np.cos(y * 0.7 - i), np.sin(0.6 * x + 0.8 * y)]
    return (127.5 + 120 * np.stack(waves, -1)).round().astype(np.uint8)


def _write(path, dataset):
    from data_pipeline.beton import write_beton
    from data_pipeline.ffcv_compat import import_ffcv

    import_ffcv()
    from ffcv.fields import RGBImageField

    write_beton(path, dataset, RGBImageField(write_mode="raw", max_resolution=256), workers=1, desc=path.name)
    return path


@pytest.fixture(scope="module")
def coordinates(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("geometry") / "coordinates.beton", GeneratedImages(30, coordinate_pixels))


@pytest.fixture(scope="module")
def smooth(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("geometry") / "smooth.beton", GeneratedImages(6, smooth_pixels))


def test_paper_crop_boxes_cover_the_scale_range():
    """For a 375x500 photo and a 224 crop: the shorter side resized to [256, 480] means a
    square box of 375*224/480 = 175 to 375*224/256 = 328 stored pixels, anywhere in the image."""
    bounds = geometry.paper_scale_bounds(256, 480)
    boxes = np.array([geometry.paper_scale_crop(375, 500, bounds, None, image_key(i)) for i in range(4000)])
    top, left, h, w = boxes.T
    assert (h == w).all()
    assert 175 <= h.min() <= 177 and 326 <= h.max() <= 328
    assert (top >= 0).all() and (top + h <= 375).all() and (left >= 0).all() and (left + w <= 500).all()
    # the shorter side after resizing (375 * 224 / side) is uniform on [256, 480]: quartiles at 311, 368, 424
    resized = np.sort(375 * 224 / h)
    assert np.allclose(np.quantile(resized, [0.25, 0.5, 0.75]), [311, 368, 424], atol=6)
    assert left.max() >= 500 - 180 and top.max() >= 375 - 180  # the position spans the image


def image_key(index: int, key: int = 12345) -> np.uint64:
    return np.uint64(sample_key(key, index))  # numba hands a uint64 back as a Python int


def test_imagenet_crop_boxes_are_torchvisions():
    """RandomResizedCrop's boxes on a 375x500 photo: 8%-100% of its area, aspect ratio 3/4-4/3,
    anywhere in the image; one image's box is the same each time its key is."""
    scale, ratio = np.array(geometry.IMAGENET_AREA), np.array(geometry.IMAGENET_ASPECT)
    boxes = np.array([geometry.imagenet_crop(375, 500, scale, ratio, image_key(i)) for i in range(4000)])
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (top + h <= 375).all() and (left >= 0).all() and (left + w <= 500).all()
    share, aspect = h * w / (375 * 500), w / h
    assert share.min() < 0.1 and share.max() > 0.95 and np.all((share > 0.07) & (share <= 1.0))
    assert aspect.min() < 0.8 and aspect.max() > 1.25 and np.all((aspect > 0.74) & (aspect < 1.35))
    assert geometry.imagenet_crop(375, 500, scale, ratio, image_key(7)) == tuple(boxes[7])


def test_validation_and_tencrop_sides_follow_the_paper():
    assert geometry.val_resize_side(224) == 256 and geometry.tencrop_load_side(224) == 256
    assert geometry.multiscale_sides(224) == (224, 256, 384, 480, 640)
    assert geometry.five_crop_corners(256, 256, 224) == [(0, 0), (0, 32), (32, 0), (32, 32), (16, 16)]
    assert geometry.center_crop(200, 150, None, 0.875) == (34, 9, 131, 131)
    assert (geometry.eval_style("paper"), geometry.eval_style("imagenet"), geometry.eval_style("cifar")) == (
        "imagenet",
        "imagenet",
        "cifar",
    )


def _box_of(crop: np.ndarray, height: int, width: int):
    """(side in stored pixels, mirrored?) of a loaded crop of a coordinate_pixels image."""
    row = crop[0, crop.shape[1] // 2]  # red along the middle row: the stored column, scaled
    col = crop[1, :, crop.shape[2] // 2]
    n = crop.shape[-1]
    across = abs(row[-1] - row[0]) / 255 * (width - 1) * n / (n - 1)
    down = abs(col[-1] - col[0]) / 255 * (height - 1) * n / (n - 1)
    return (across + down) / 2, row[-1] < row[0]


def test_paper_augmentation_through_the_loader(coordinates):
    """The FFCV pipeline of `augment: paper` at a 32 crop: every crop is square, its side is the
    shorter side times 224/[256, 480], and about half the crops are mirrored."""
    torch.manual_seed(0)
    loader = build_train_loader(
        coordinates,
        augment="paper",
        batch_size=10,
        num_workers=1,
        seed=0,
        lighting=0.0,
        resolution=geometry_schedule(32),
        **RAW,
    )
    fractions, mirrored = [], 0
    for epoch in range(4):
        loader.set_epoch(epoch)
        for images, labels in loader:
            for crop, index in zip(images.numpy(), labels.tolist()):
                h, w = SIZES[index % len(SIZES)]
                side, flipped = _box_of(crop, h, w)
                fractions.append(side / min(h, w))
                mirrored += flipped
    fractions = np.array(fractions)
    assert images.shape[-2:] == (32, 32)
    assert fractions.min() >= 224 / 480 - 0.03 and fractions.max() <= 224 / 256 + 0.03
    assert fractions.max() - fractions.min() > 0.25  # the scale is drawn, not fixed
    assert 0.3 < mirrored / len(fractions) < 0.7


def geometry_schedule(res: int):
    from data_pipeline import ResolutionSchedule

    return ResolutionSchedule(res, res, 0, 0)


def _pil_validation_view(image: np.ndarray, res: int, short: int | None = None) -> np.ndarray:
    """torchvision's evaluation preset, per image: shorter side to res/0.875, center res crop."""
    h, w = image.shape[:2]
    short = short or round(res / 0.875)
    size = (short, round(h * short / w)) if w <= h else (round(w * short / h), short)
    resized = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR), dtype=np.float32)
    top, left = (resized.shape[0] - res) // 2, (resized.shape[1] - res) // 2
    return resized[top : top + res, left : left + res].transpose(2, 0, 1)


@pytest.mark.parametrize("augment", ["imagenet", "paper"])
def test_validation_view_matches_resize_and_center_crop(smooth, augment):
    res = 48
    loader = build_val_loader(smooth, augment=augment, batch_size=6, num_workers=1, resolution=res, **RAW)
    (images, labels) = next(iter(loader))
    source = GeneratedImages(6, smooth_pixels)
    for view, index in zip(images.numpy(), labels.tolist()):
        image = source[index][0]
        expected = _pil_validation_view(image, res)
        assert np.abs(view - expected).mean() < 3.5
        # the whole shorter side instead (no 0.875 crop) is far off: the check sees geometry
        wrong = _pil_validation_view(image, res, short=res)
        assert np.abs(view - wrong).mean() > 2 * np.abs(view - expected).mean()


def _lighting_shift(alphas: np.ndarray) -> np.ndarray:
    """AlexNet's PCA lighting: per image, the RGB shift eigvec @ (alpha * eigval) on the 0-255
    scale, for alphas of shape (N, 3) drawn from N(0, std). Returns (N, 3)."""
    eigvec = np.asarray(geometry.LIGHTING_EIGVEC)
    return 255.0 * (np.asarray(alphas) * np.asarray(geometry.LIGHTING_EIGVAL)) @ eigvec.T


def test_lighting_adds_alexnets_pca_shift_per_image():
    """One RGB shift per image, from three normal draws keyed by the epoch and the image's index."""
    std = (50.0, 60.0, 70.0)
    lighting = Lighting(0.1, std, "cpu")
    images = torch.zeros(4, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    indices = np.array([7, 3, 11, 0], dtype=np.uint64)
    shifted = lighting(images, key=99, indices=indices)
    alphas = normals(mix(np.uint64(99 ^ Lighting.SALT)), indices, 3) * 0.1
    expected = _lighting_shift(alphas) / np.asarray(std)
    assert np.allclose(shifted[:, :, 2, 3].numpy(), expected, atol=1e-4)
    assert np.allclose(shifted.amax(dim=(2, 3)), shifted.amin(dim=(2, 3)))  # one shift per image and channel
    assert shifted.is_contiguous(memory_format=torch.channels_last)
    # an image's shift is its own, wherever it sits in the batch, and another epoch's key draws anew
    reordered = lighting(images, key=99, indices=indices[::-1].copy())
    assert torch.equal(reordered[0], shifted[3]) and torch.equal(reordered[3], shifted[0])
    assert not torch.equal(lighting(images, key=100, indices=indices), shifted)
