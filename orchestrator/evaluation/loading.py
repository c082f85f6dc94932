"""One worker's shard of the validation set as raw batches: 0-255 float32, NCHW channels_last,
on the worker's device (labels too): on a GPU, the uint8 batch is moved there and made float.

Batches stay unnormalized so that TTA pads with black and each ensemble member normalizes
with its own mean and std. They come from data_pipeline.build_val_loader, the training loop's
validation loader, so `--tta none` sees exactly what its validation saw; the paper's 10-crop
and multiscale ask it for the whole shorter side (crop ratio 1.0) instead of the 0.875 center.
"""

from data_pipeline import build_val_loader
from data_pipeline.geometry import VAL_CROP_RATIO
from orchestrator.evaluation.tta import Protocol

_RAW = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def shard_batches(
    path: str, protocol: Protocol, *, batch_size: int, threads: int, rank: int, world: int, device: str = "cpu"
):
    """(images, labels) for this rank's contiguous shard (data_pipeline.val_shard), on `device`."""
    side, ratio = protocol.load_geometry()  # ratio None: cifar style, the stored images
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
        crop_ratio=ratio or VAL_CROP_RATIO,
        **_RAW,
    )
