"""Pure functions of the epoch and the rank: progressive resizing and validation shards."""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ResolutionSchedule:
    """ffcv-imagenet's progressive resizing: min_res until start_epoch, max_res from end_epoch,
    a linear ramp in between rounded to a multiple of `step`."""

    min_res: int
    max_res: int
    start_epoch: int
    end_epoch: int
    step: int = 32

    def __post_init__(self):
        if not 0 < self.min_res <= self.max_res:
            raise ValueError(f"need 0 < min_res <= max_res, got {self.min_res}, {self.max_res}")
        if not 0 <= self.start_epoch <= self.end_epoch:
            raise ValueError(f"need 0 <= start_epoch <= end_epoch, got {self.start_epoch}, {self.end_epoch}")
        if self.step < 1:
            raise ValueError(f"step must be at least 1, got {self.step}")

    def at(self, epoch: int) -> int:
        if epoch <= self.start_epoch:
            return self.min_res
        if epoch >= self.end_epoch:
            return self.max_res
        interp = np.interp(epoch, [self.start_epoch, self.end_epoch], [self.min_res, self.max_res])
        res = int(np.round(interp / self.step)) * self.step
        # ffcv-imagenet can round outside [min_res, max_res] when they are not multiples of step
        return min(max(res, self.min_res), self.max_res)


def val_shard(num_samples: int, rank: int, world_size: int) -> tuple[int, int]:
    """This rank's [start, stop) of the validation set: contiguous, sizes differ by at most one,
    every sample in exactly one shard (unlike DistributedSampler, which pads with repeats)."""
    if world_size < 1 or not 0 <= rank < world_size or num_samples < 0:
        raise ValueError(f"need num_samples >= 0 and 0 <= rank < world_size, got {num_samples}, {rank}, {world_size}")
    base, extra = divmod(num_samples, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)
