"""Random draws of the training augmentations as functions of (seed, epoch, sample index), so
that a run draws the same crops, flips and lighting noise for every image whatever the number
of loader threads, which thread handles which image, or where a resumed epoch starts.

Counter-based: a draw is a hash of a key, not the next value of a generator a thread owns.
  epoch_key(seed, epoch)          the loader's key for one epoch
  sample_key(key, index)          one image's key (index: its place in the dataset file)
  uniform(key, k)                 the image's k-th draw, in [0, 1)
Every stage of an FFCV pipeline that draws (data_pipeline.augment) takes its own key once per
batch from numba's generator of the thread that runs the pipeline, which
data_pipeline.ffcv_compat seeds with epoch_seed(seed, epoch) before every batch: so each stage
has one key per epoch, and its draws inside the parallel loop over the batch's images come from
sample_key(stage key, index) alone. The hash is splitmix64's finalizer (Steele et al. 2014).
"""

import numba
import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
STAGE_KEYS = 2**62  # a stage draws its key from [0, STAGE_KEYS)


@numba.njit(cache=True)
def mix(x):
    """splitmix64's finalizer: a bijection of the 64-bit integers that scatters near values."""
    x = np.uint64(x)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@numba.njit(cache=True)
def sample_key(key, index):
    """The key of the image at `index` of the dataset file, under a stage's or epoch's key."""
    return mix(np.uint64(key) ^ mix(np.uint64(index) + _GOLDEN))


@numba.njit(cache=True)
def uniform(key, k):
    """The k-th draw (k >= 0) under an image's key: a float64 in [0, 1) with 53 random bits."""
    return np.float64(mix(np.uint64(key) + np.uint64(k + 1) * _GOLDEN) >> np.uint64(11)) / 9007199254740992.0


@numba.njit(cache=True)
def normals(key, indices, count):
    """(len(indices), count) standard normal draws, the images' at `indices` under `key`
    (Box-Muller on pairs of uniform draws)."""
    out = np.empty((len(indices), count))
    for i in range(len(indices)):
        own = sample_key(key, indices[i])
        for j in range(count):
            radius = np.sqrt(-2.0 * np.log(1.0 - uniform(own, 2 * j)))
            out[i, j] = radius * np.cos(2.0 * np.pi * uniform(own, 2 * j + 1))
    return out


def epoch_key(seed: int, epoch: int) -> int:
    """The key of one epoch of a loader seeded with `seed`."""
    return int(mix(mix(np.uint64(int(seed) % 2**64)) ^ np.uint64(int(epoch) % 2**64)))


def epoch_seed(seed: int, epoch: int) -> int:
    """A 31-bit seed of numba's generator for one epoch: the stages' keys come from it."""
    return epoch_key(seed, epoch) % (2**31 - 1)


@numba.njit(cache=True)
def _seed_this_thread(value):
    np.random.seed(value)


def seed_stage_keys(seed: int, epoch: int) -> None:
    """Before a batch, in the thread that runs the pipeline: its stages draw this epoch's keys."""
    _seed_this_thread(epoch_seed(seed, epoch))
