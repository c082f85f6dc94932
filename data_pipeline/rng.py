"""Seeding numba's random generator, which FFCV's augmentations draw from (one generator per
thread): data_pipeline.ffcv_compat calls `seed_batch` before every batch."""

import numba
import numpy as np


@numba.njit(cache=True)
def _seed_this_thread(value):
    np.random.seed(value)


@numba.njit(parallel=True, cache=True)
def _seed_every_thread(value, threads):
    # One iteration per thread; which thread takes which is not fixed, so this narrows the
    # spread between runs with several loader threads without making them equal.
    for i in numba.prange(threads):
        np.random.seed(value + i)


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """A 31-bit seed for one batch of one epoch of a loader seeded with `seed`."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + int(batch) * 104_729) % (2**31 - 1024)


def seed_batch(seed: int, epoch: int, batch: int) -> None:
    value = batch_seed(seed, epoch, batch)
    _seed_this_thread(value)
    threads = numba.get_num_threads()
    if threads > 1:
        _seed_every_thread(value + 1, threads)
