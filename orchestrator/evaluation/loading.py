"""One worker's shard of the validation set as raw batches: 0-255 float32, NCHW channels_last,
on the worker's device (labels too): on a GPU, the uint8 batch is moved there and made float.

Batches stay unnormalized so that TTA pads with black and each ensemble member normalizes
with its own mean and std. The standard views (cifar style, and imagenet style at the 0.875
center crop) come from data_pipeline.build_val_loader, so `--tta none` sees exactly what the
training loop's validation saw. The paper's 10-crop and multiscale need the whole shorter
side (crop ratio 1.0), which build_val_loader does not offer; a small FFCV loader here reads
those.
"""

import numpy as np
import torch

from data_pipeline import build_val_loader, val_shard
from data_pipeline.beton import image_and_label_fields, num_samples, open_reader
from data_pipeline.ffcv_compat import import_ffcv, loader_threads
from orchestrator.evaluation.tta import IMAGENET_CROP_RATIO, Protocol

_RAW = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def shard_batches(
    path: str, protocol: Protocol, *, batch_size: int, threads: int, rank: int, world: int, device: str = "cpu"
):
    """(images, labels) for this rank's contiguous shard (data_pipeline.val_shard), on `device`."""
    side, ratio = protocol.load_geometry()
    if ratio is None or ratio == IMAGENET_CROP_RATIO:
        return build_val_loader(
            path,
            augment=protocol.style,
            batch_size=batch_size,
            num_workers=threads,
            resolution=side,
            rank=rank,
            world_size=world,
            device=device,  # on a GPU it normalizes there, with _RAW to the same 0-255 floats
            channels_last=True,
            **_RAW,
        )
    return _whole_square(path, side, batch_size, threads, val_shard(num_samples(path), rank, world), device)


def _whole_square(path: str, side: int, batch_size: int, threads: int, shard: tuple[int, int], device: str):
    """The center square of each image's whole shorter side, resized to side x side."""
    if shard[0] == shard[1]:  # more workers than samples
        return
    import_ffcv()
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage

    reader = open_reader(path)
    image_field, label_field = image_and_label_fields(reader, path)
    # Squeeze(1): a batch of one stays 1-D. On a GPU, uint8 batches travel (4x less than floats).
    to_device = [ToDevice(torch.device(device), non_blocking=True)] if device != "cpu" else []
    pipelines = {name: None for name in reader.handlers}
    pipelines[image_field] = [
        CenterCropRGBImageDecoder((side, side), ratio=1.0),
        ToTensor(),
        *to_device,
        ToTorchImage(channels_last=True),
    ]
    pipelines[label_field] = [IntDecoder(), ToTensor(), Squeeze(1), *to_device]
    loader = Loader(
        str(path),
        batch_size=batch_size,
        num_workers=loader_threads(threads),
        order=OrderOption.SEQUENTIAL,
        indices=np.arange(*shard, dtype=np.uint64),
        drop_last=False,
        pipelines=pipelines,
    )
    image_first = reader.field_names.index(image_field) < reader.field_names.index(label_field)
    for first, second in loader:
        images, labels = (first, second) if image_first else (second, first)
        yield images.float(), labels  # keeps channels_last
