"""FFCV loaders for the training loop.

Both yield (images, labels): images float32, normalized with the dataset's mean and std,
NCHW in channels_last memory format, on `device`; labels int64, 1-D, on `device`. On the CPU
the tensors are views of FFCV's reused batch buffers: copy them to keep them past the next
few batches.

Pipelines on the CPU normalize with FFCV's jitted NormalizeImage *before* ToTensor: placed
after ToTorchImage, Loader() spins forever (libffcv/ffcv#396). On a GPU the uint8 batch is
moved first and normalized in torch, since FFCV's GPU NormalizeImage needs cupy.
"""

import numpy as np
import torch

from data_pipeline import ffcv_compat, geometry
from data_pipeline.beton import image_and_label_fields, num_samples, open_reader
from data_pipeline.ffcv_compat import field_metadata, import_ffcv, loader_threads
from data_pipeline.rng import epoch_key, mix, normals
from data_pipeline.schedule import ResolutionSchedule, val_shard
from orchestrator.errors import DataError

AUGMENTS = ("imagenet", "paper", "cifar")
DEFAULT_RESOLUTION = 224


def normalize_on_device(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """A uint8 NCHW batch already on the GPU to normalized float32 (keeps channels_last).
    mean and std: (1, 3, 1, 1) float32 tensors on the same device, 0-255 scale."""
    return (images.float() - mean) / std


class _Batches:
    """Wraps an ffcv Loader: finishes each batch (GPU normalization, memory format)."""

    def __init__(self, loader, image_first: bool, device: str, mean, std, channels_last: bool):
        self._loader = loader
        self._image_first = image_first
        self._channels_last = channels_last
        self._gpu = _is_cuda(device)
        if self._gpu:
            self._mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
            self._std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def __iter__(self):
        if self._loader is None:  # an empty validation shard
            return
        for first, second in self._loader:
            images, labels = (first, second) if self._image_first else (second, first)
            if self._gpu:
                images = normalize_on_device(images, self._mean, self._std)
            if not self._channels_last:
                images = images.contiguous()
            yield images, labels

    def __len__(self) -> int:
        return 0 if self._loader is None else len(self._loader)


class Lighting:
    """AlexNet's PCA lighting noise (data_pipeline.geometry), added to normalized batches: one
    RGB shift per image from three normal draws keyed by the loader's seed, the epoch and the
    image's index in the dataset (data_pipeline.rng), divided by std since the batch is already
    normalized."""

    SALT = 0x4C49474854  # sets the lighting's draws apart from the pipeline stages'

    def __init__(self, alpha_std: float, std, device):
        self.alpha_std = alpha_std
        self._eigval = torch.tensor(geometry.LIGHTING_EIGVAL, dtype=torch.float32, device=device)
        eigvec = torch.tensor(geometry.LIGHTING_EIGVEC, dtype=torch.float32, device=device)
        self._to_normalized = eigvec.T * 255.0 / torch.tensor(std, dtype=torch.float32, device=device)

    def __call__(self, images: torch.Tensor, key: int, indices: np.ndarray) -> torch.Tensor:
        """The batch of the images at `indices` (of the dataset file), in the epoch of `key`."""
        draws = normals(mix(np.uint64(key ^ self.SALT)), np.asarray(indices, dtype=np.uint64), 3)
        alphas = torch.from_numpy(draws).to(images.device, torch.float32) * self.alpha_std
        shift = (alphas * self._eigval) @ self._to_normalized
        return images + shift.view(-1, 3, 1, 1)


class TrainLoader(_Batches):
    """Shuffled, augmented batches; drop_last, so every rank has the same number of batches."""

    def __init__(self, loader, image_first, device, mean, std, channels_last, decoder, schedule, resolution, lighting):
        super().__init__(loader, image_first, device, mean, std, channels_last)
        self._decoder = decoder
        self._schedule = schedule
        self._lighting = lighting
        self.resolution: int = resolution
        self.batch_size: int = loader.batch_size
        self._skip = 0
        ffcv_compat.skip_first_batches(loader, lambda: self._skip)

    def __iter__(self):
        if self._lighting is None:
            yield from super().__iter__()
            return
        key, size = epoch_key(*ffcv_compat.next_epoch_seed(self._loader)), self.batch_size
        for batch, (images, labels) in enumerate(super().__iter__(), start=self._skip):
            indices = ffcv_compat.epoch_order(self._loader)[batch * size : (batch + 1) * size]
            yield self._lighting(images, key, indices), labels

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select epoch's shuffle (a resumed run sees the same order) and, imagenet style, its
        resolution; the next pass starts after `skip_batches` of the epoch's batches (a step
        checkpoint's), which are neither read nor decoded, and draws the augmentations the
        uninterrupted epoch drew for the batches that follow."""
        if not 0 <= skip_batches < len(self):
            raise ValueError(f"skip_batches must be in [0, {len(self)}), got {skip_batches}")
        ffcv_compat.set_next_epoch(self._loader, epoch)
        self._skip = skip_batches
        if self._schedule is not None:
            self.resolution = self._schedule.at(epoch)
            # Buffers are sized from the decoder's state at the start of every epoch (ffcv-imagenet does this).
            self._decoder.output_size = (self.resolution, self.resolution)


class ValLoader(_Batches):
    """This rank's contiguous shard in file order; with every rank, each sample exactly once."""

    def __init__(self, loader, image_first, device, mean, std, channels_last, shard, resolution):
        super().__init__(loader, image_first, device, mean, std, channels_last)
        self.start, self.stop = shard
        self.num_samples: int = self.stop - self.start
        self.resolution: int = resolution


def first_samples(total: int, max_samples: int | None) -> int:
    """How many of a file's `total` samples a loader reads: its first max_samples (all for None)."""
    if max_samples is None:
        return total
    if max_samples < 1:
        raise ValueError(f"max_samples must be at least 1, got {max_samples}")
    return min(total, max_samples)


def build_train_loader(
    path,
    *,
    augment: str,
    batch_size: int,
    num_workers: int,
    seed: int,
    mean,
    std,
    resolution: ResolutionSchedule | None = None,
    distributed: bool = False,
    max_samples: int | None = None,
    device: str = "cpu",
    channels_last: bool = True,
    short_side: tuple[int, int] = geometry.PAPER_SHORT_SIDE,
    lighting: float = geometry.PAPER_LIGHTING_STD,
    in_memory: bool = True,
) -> TrainLoader:
    """The training view of data_pipeline.geometry: imagenet (RandomResizedCrop + flip), paper
    (section 3.4: shorter side in `short_side`, crop, flip, `lighting` PCA noise) or cifar
    (padded random crop + flip). imagenet and paper crop to resolution.at(epoch).

    distributed=True shards by torch.distributed's rank and world size (a process group must
    exist); FFCV pads the shards with repeated samples, as DistributedSampler does.
    in_memory=True reads through the page cache in random order; False reads pages itself in
    FFCV's quasi-random order, for data larger than memory (random order when distributed,
    which FFCV's quasi-random order does not support).
    """
    total = num_samples(path)
    _check_common(augment, batch_size)
    if distributed and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise RuntimeError("build_train_loader(distributed=True) needs torch.distributed's process group")
    indices = None if max_samples is None else np.arange(first_samples(total, max_samples), dtype=np.uint64)
    import_ffcv()
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import OrderOption

    from data_pipeline.augment import Flip, Translate

    reader = open_reader(path)
    schedule, res = None, None
    if augment == "cifar":
        res = _one_size(reader, path)
        decoder = SimpleRGBImageDecoder()
        image_ops = [decoder, Translate(padding=geometry.CIFAR_PADDING), Flip()]
    else:
        schedule = resolution or ResolutionSchedule(DEFAULT_RESOLUTION, DEFAULT_RESOLUTION, 0, 0)
        res = schedule.at(0)
        decoder = _train_decoder(augment, res, short_side)
        image_ops = [decoder, Flip()]
    quasi = not in_memory and not distributed
    loader, image_first = _ffcv_loader(
        path,
        reader,
        image_ops,
        device,
        mean,
        std,
        batch_size=batch_size,
        num_workers=num_workers,
        order=OrderOption.QUASI_RANDOM if quasi else OrderOption.RANDOM,
        os_cache=in_memory,
        distributed=distributed,
        seed=seed,
        indices=indices,
        drop_last=True,
    )
    if len(loader) == 0:
        raise DataError(
            f"{path}: {len(loader.indices)} samples give no full batch of {batch_size} on this rank; "
            "lower the batch size"
        )
    noise = Lighting(lighting, std, device) if augment == "paper" and lighting > 0 else None
    return TrainLoader(loader, image_first, device, mean, std, channels_last, decoder, schedule, res, noise)


def build_val_loader(
    path,
    *,
    augment: str,
    batch_size: int,
    num_workers: int,
    mean,
    std,
    resolution: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    device: str = "cpu",
    channels_last: bool = True,
    in_memory: bool = True,
    crop_ratio: float = geometry.VAL_CROP_RATIO,
    max_samples: int | None = None,
) -> ValLoader:
    """imagenet and paper: the shorter side to resolution/crop_ratio and the center resolution
    square (data_pipeline.geometry: validation's 0.875; test-time augmentation's 10-crop and
    multi-scale read the whole shorter side, 1.0); cifar: the stored image.

    Shards with val_shard, not FFCV's distributed ordering, which pads with repeated samples;
    max_samples: the file's first N samples only.
    """
    total = first_samples(num_samples(path), max_samples)
    _check_common(augment, batch_size)
    shard = val_shard(total, rank, world_size)
    import_ffcv()
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import OrderOption

    reader = open_reader(path)
    if geometry.eval_style(augment) == "imagenet":
        from data_pipeline.augment import crop_decoder

        res = resolution or DEFAULT_RESOLUTION
        decoder = crop_decoder((res, res), geometry.center_crop, ratio=crop_ratio)
    else:
        res = _one_size(reader, path)
        decoder = SimpleRGBImageDecoder()
    if shard[0] == shard[1]:  # more ranks than samples
        return ValLoader(None, True, device, mean, std, channels_last, shard, res)
    loader, image_first = _ffcv_loader(
        path,
        reader,
        [decoder],
        device,
        mean,
        std,
        batch_size=batch_size,
        num_workers=num_workers,
        order=OrderOption.SEQUENTIAL,
        os_cache=in_memory,
        distributed=False,
        seed=0,
        indices=np.arange(*shard, dtype=np.uint64),
        drop_last=False,
    )
    return ValLoader(loader, image_first, device, mean, std, channels_last, shard, res)


def _train_decoder(augment: str, res: int, short_side: tuple[int, int]):
    from data_pipeline.augment import crop_decoder

    if augment == "paper":
        bounds = geometry.paper_scale_bounds(*short_side)
        return crop_decoder((res, res), geometry.paper_scale_crop, scale=bounds, ratio=(1.0, 1.0))
    area, aspect = geometry.IMAGENET_AREA, geometry.IMAGENET_ASPECT
    return crop_decoder((res, res), geometry.imagenet_crop, scale=area, ratio=aspect)


def _ffcv_loader(path, reader, image_ops, device, mean, std, *, num_workers, **loader_args):
    from ffcv.fields.basics import IntDecoder
    from ffcv.loader import Loader
    from ffcv.transforms import NormalizeImage, Squeeze, ToDevice, ToTensor, ToTorchImage

    image_field, label_field = image_and_label_fields(reader, path)
    if _is_cuda(device):
        target = torch.device(device)
        image_ops = image_ops + [ToTensor(), ToDevice(target, non_blocking=True), ToTorchImage(channels_last=True)]
        label_ops = [IntDecoder(), ToTensor(), Squeeze(1), ToDevice(target, non_blocking=True)]
    else:
        normalize = NormalizeImage(np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64), np.float32)
        image_ops = image_ops + [normalize, ToTensor(), ToTorchImage(channels_last=True)]
        label_ops = [IntDecoder(), ToTensor(), Squeeze(1)]  # Squeeze(1): a batch of one stays 1-D
    names = list(ffcv_compat.fields(reader))
    pipelines = {name: None for name in names}
    pipelines.update({image_field: image_ops, label_field: label_ops})
    loader = Loader(str(path), num_workers=loader_threads(num_workers), pipelines=pipelines, **loader_args)
    image_first = names.index(image_field) < names.index(label_field)
    return loader, image_first


def _check_common(augment: str, batch_size: int) -> None:
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")


def _one_size(reader, path) -> int:
    """cifar style reads stored images as they are: they must all have one size."""
    meta = field_metadata(reader, image_and_label_fields(reader, path)[0])
    heights, widths = np.unique(meta["height"]), np.unique(meta["width"])
    if len(heights) != 1 or len(widths) != 1:
        raise DataError(
            f"{path}: images of several sizes ({heights.min()}-{heights.max()} x {widths.min()}-{widths.max()}); "
            "cifar augmentation needs one size: use augment imagenet, or rewrite the data at one size"
        )
    return int(heights[0])


def _is_cuda(device) -> bool:
    return str(device).startswith("cuda")
