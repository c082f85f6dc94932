"""The one place that imports ffcv, imported lazily: it costs seconds (numba) and has a side effect.

FFCV's Compiler.set_num_threads also calls torch.set_num_threads, which is process-wide:
importing ffcv drops torch to 1 thread and every Loader epoch resets it to the loader's
worker count, so CPU training would run at the data loader's thread count. We keep the
numba half (thread-local, what the jitted pipeline needs) and leave torch's setting alone.
"""

from multiprocessing import cpu_count

_patched = False


def import_ffcv():
    """Import ffcv once with torch's thread count preserved; return the ffcv package."""
    global _patched
    import torch

    threads = torch.get_num_threads()
    import ffcv
    import numba
    from ffcv.pipeline.compiler import Compiler

    if not _patched:

        def set_num_threads(cls, n):
            if n < 1:
                n = cpu_count()
            cls.num_threads = n
            numba.set_num_threads(n)

        Compiler.set_num_threads = classmethod(set_num_threads)
        _patched = True
        torch.set_num_threads(threads)
    return ffcv


def loader_threads(num_workers: int) -> int:
    """FFCV's worker count is numba's thread count, which cannot exceed NUMBA_NUM_THREADS."""
    import numba

    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    return min(num_workers, numba.config.NUMBA_NUM_THREADS)
