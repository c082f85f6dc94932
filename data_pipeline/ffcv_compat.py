"""The one place that imports ffcv first, lazily: it costs seconds (numba) and has side effects.

Two of FFCV's Compiler methods are replaced when it is imported:
- set_num_threads also calls torch.set_num_threads, which is process-wide: importing ffcv
  drops torch to 1 thread and every Loader epoch resets it to the loader's worker count, so CPU
  training would run at the data loader's thread count. We keep the numba half (thread-local,
  what the jitted pipeline needs) and leave torch's setting alone.
- compile jits every pipeline operation afresh in each process: 10-15 s of a 2-core machine
  for each Ray Train worker of each job, before its first step. Operations defined in FFCV's
  files are now compiled with numba's on-disk cache (cache=True: keyed by the function's code,
  the values it closes over and its signature, invalidated when the file changes), so later
  processes load them in about a second. The stage code FFCV generates at run time has no file
  to key a cache on and is compiled as before.
"""

import inspect
import warnings
from multiprocessing import cpu_count

_patched = False


def import_ffcv():
    """Import ffcv once with torch's thread count preserved; return the ffcv package."""
    global _patched
    import torch

    threads = torch.get_num_threads()
    _import_without_typed_dict()
    import ffcv
    import numba
    from ffcv.pipeline.compiler import Compiler
    from numba.core.errors import NumbaWarning

    if not _patched:

        def set_num_threads(cls, n):
            if n < 1:
                n = cpu_count()
            cls.num_threads = n
            numba.set_num_threads(n)

        Compiler.set_num_threads = classmethod(set_num_threads)
        Compiler.compile = classmethod(_compile_cached)
        _seed_each_batch()
        # An operation that reads ctypes pointers cannot be cached; it is compiled as before.
        warnings.filterwarnings("ignore", message="Cannot cache compiled function", category=NumbaWarning)
        _patched = True
        torch.set_num_threads(threads)
    return ffcv


def _import_without_typed_dict() -> None:
    """Import ffcv with numba.typed.Dict standing in as a plain dict: FFCV fills one typed dict at
    import (IMAGE_MODES in ffcv.fields.rgb_image), read only from Python (when a decoder writes
    its code, and by the writer), and numba compiles the typed dict's methods for it: about 4 s
    of every process that imports ffcv, on these machines."""
    import sys

    import numba.typed

    if "ffcv" in sys.modules:
        return
    typed_dict = numba.typed.Dict
    numba.typed.Dict = dict
    try:
        import ffcv  # noqa: F401
    finally:
        numba.typed.Dict = typed_dict


def _seed_each_batch() -> None:
    """Before every batch, seed numba's generator of the thread that runs the pipeline from
    the loader's seed and epoch: each random stage (data_pipeline.augment) draws its key for
    the epoch from it, then keys each image by its index (data_pipeline.rng). So a run draws the
    same augmentations as another run of its spec, with any number of loader threads, and a
    resumed epoch draws for its images what the uninterrupted one drew."""
    from ffcv.loader.epoch_iterator import EpochIterator

    from data_pipeline.rng import seed_stage_keys

    run_pipeline = EpochIterator.run_pipeline

    def seeded_run_pipeline(self, b_ix, batch_indices, batch_slot, cuda_event):
        seed_stage_keys(self.loader.seed, self.loader.next_epoch - 1)
        return run_pipeline(self, b_ix, batch_indices, batch_slot, cuda_event)

    EpochIterator.run_pipeline = seeded_run_pipeline


def loader_threads(num_workers: int) -> int:
    """FFCV's worker count is numba's thread count, which cannot exceed NUMBA_NUM_THREADS."""
    import numba

    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    return min(num_workers, numba.config.NUMBA_NUM_THREADS)


def _compile_cached(cls, code, signature=None):
    """FFCV's Compiler.compile, with numba's on-disk cache for functions defined in a file."""
    from numba import njit

    if not cls.is_enabled:
        return code
    parallel = bool(getattr(code, "is_parallel", False)) and cls.num_threads > 1
    return njit(
        signature, fastmath=True, nogil=True, error_model="numpy", parallel=parallel, cache=_has_source_file(code)
    )(code)


def _has_source_file(function) -> bool:
    try:
        return not inspect.getfile(function).startswith("<")  # "<string>": made by exec
    except TypeError:
        return False


def memory_allocator(fname: str, offset_start: int, page_size: int, context):
    """FFCV's writer-side MemoryAllocator with its two shared page counters made in the
    multiprocessing `context` the writer's processes start in: FFCV makes them in the default
    (fork) context, which processes of a fork server cannot share."""
    import ctypes

    from ffcv.memory_allocator import MemoryAllocator

    allocator = MemoryAllocator(fname, offset_start, page_size)
    for counter in ("next_page_allocated", "next_page_written"):
        if not hasattr(allocator, counter):
            raise RuntimeError(f"ffcv's MemoryAllocator has no {counter} (orch was written against ffcv 1.0.2)")
        setattr(allocator, counter, context.Value(ctypes.c_uint64, 0))
    return allocator
