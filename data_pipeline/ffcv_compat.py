"""Every FFCV 1.0.2 internal orch relies on, in one module: what reaches past FFCV's public API
(Loader, the fields and decoders, Operation with Compiler.get_iterator) to private methods,
attributes its classes keep for themselves, its file layout or code copied from it. An FFCV
upgrade is checked here. It is also the one place that imports ffcv first, lazily: that costs
seconds (numba) and has side effects.

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

Besides: the .beton header's layout, a Reader's fields and their metadata, a Loader's epoch and
traversal order (a resumed epoch skips batches), the writer's worker loop (data_pipeline.beton's
checked writer) and its resize, and the resized-crop decoder's code (data_pipeline.augment's
keyed crops).
"""

import ctypes
import inspect
import os
import queue
import sys
import time
import warnings
from multiprocessing import cpu_count

import numpy as np

from orchestrator.errors import DataError

# FFCV 1.0.2's file header (ffcv.types.HeaderType), repeated here so that reading a header
# does not import ffcv and numba (seconds) in commands that only need the sample count.
HEADER = np.dtype(
    [
        ("version", "<u2"),
        ("num_fields", "<u2"),
        ("page_size", "<u4"),
        ("num_samples", "<u8"),
        ("alloc_table_ptr", "<u8"),
    ],
    align=True,
)
FORMAT_VERSION = 2
IMAGE_MODES = {0: "jpg", 1: "raw"}  # an image's stored mode in its metadata (ffcv.fields.rgb_image.IMAGE_MODES)

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


# --- a Reader's fields (FFCV keeps them as attributes of its Reader) ---------------------------


def fields(reader) -> dict:
    """{name: field} of a Reader's file, in file order: the order a Loader yields them in."""
    return reader.handlers


def field_metadata(reader, name: str) -> np.ndarray:
    """Per-sample metadata of one field (image: mode/width/height; int: the value)."""
    return reader.metadata[f"f{reader.field_names.index(name)}"]


# --- a Loader's epoch and traversal order ------------------------------------------------------


def set_next_epoch(loader, epoch: int) -> None:
    """Make the Loader's next pass epoch `epoch`: its order and (through _seed_each_batch) its
    draws are those of that epoch. FFCV has no setter; it counts passes in next_epoch."""
    loader.next_epoch = epoch


def next_epoch_seed(loader) -> tuple[int, int]:
    """(seed, epoch) of the Loader's next pass; during a pass, of the pass after it."""
    return loader.seed, loader.next_epoch


def skip_first_batches(loader, skip) -> None:
    """Make the Loader's next pass leave out its first skip() batches: its traversal order
    (which depends only on seed and epoch) loses them, and FFCV's drop_last slice is kept. The
    whole epoch's order stays readable as epoch_order(loader) (the images of each batch)."""
    sample_order = loader.next_traversal_order

    def next_traversal_order():
        order = loader.orch_order = sample_order()
        return order[skip() * loader.batch_size : len(loader) * loader.batch_size]

    loader.next_traversal_order = next_traversal_order


def epoch_order(loader) -> np.ndarray:
    """The sample indices of the pass under way, in order, skipped batches included
    (skip_first_batches must have been applied)."""
    return loader.orch_order


# --- the writer's worker loop ------------------------------------------------------------------


def checked_writer_class(context):
    """FFCV's DatasetWriter whose main loop notices dead workers, its processes started in the
    multiprocessing `context`. FFCV's own loop (_write_common, _run_workers) waits for the sample
    counter to reach the total, so a worker that raises (an unreadable image, a sample larger than
    a page) hangs the write forever."""
    from ffcv.writer import DatasetWriter

    class CheckedWriter(DatasetWriter):
        desc = "writing"

        def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):
            self.num_samples = num_samples
            self.prepare()
            try:
                self._run_workers(queue_content, work_fn, extra_worker_args)
            finally:
                self.metadata_sm.close()
                self.metadata_sm.unlink()

        def _run_workers(self, queue_content, work_fn, extra_worker_args):
            from tqdm import tqdm

            work = context.Queue()
            for todo in queue_content:
                work.put(todo)
            for _ in range(self.num_workers):
                work.put(None)
            allocations = context.Queue()
            done = context.Value(ctypes.c_uint64, 0)
            allocator = memory_allocator(self.fname, self.data_region_start, self.page_size, context)
            args = (
                work,
                self.metadata_sm,
                self.metadata_type,
                self.fields,
                allocator,
                done,
                allocations,
                *extra_worker_args,
            )
            processes = [context.Process(target=work_fn, args=args, daemon=True) for _ in range(self.num_workers)]
            try:
                for p in processes:
                    p.start()
                with tqdm(total=self.num_samples, desc=self.desc, unit="img", file=sys.stderr) as bar:
                    while bar.n < self.num_samples:
                        _raise_if_failed(processes, self.fname)
                        if done.value > bar.n:
                            bar.update(done.value - bar.n)
                        time.sleep(0.05)
                table = []
                for _ in processes:
                    table.extend(_get_alive(allocations, processes, self.fname))
                for p in processes:
                    p.join()
            finally:
                for p in processes:
                    if p.is_alive():
                        p.terminate()
                        p.join()
            self.finalize(table)

    return CheckedWriter


def _raise_if_failed(processes, fname) -> None:
    for p in processes:
        if p.exitcode not in (None, 0):
            raise DataError(
                f"writing {os.path.basename(fname)} failed: a writer process exited with code "
                f"{p.exitcode} (its error is printed above)"
            )


def _get_alive(q, processes, fname):
    while True:
        try:
            return q.get(timeout=0.5)
        except queue.Empty:
            _raise_if_failed(processes, fname)


def writer_resize(image: np.ndarray, max_resolution: int | None) -> np.ndarray:
    """The image as FFCV's writer stores it: its longer side shrunk to max_resolution
    (ffcv.fields.rgb_image.resizer, which RGBImageField applies before encoding)."""
    from ffcv.fields.rgb_image import resizer

    return resizer(image, max_resolution)


# --- the resized-crop decoder's code -----------------------------------------------------------


def keyed_resized_crop(mem_read, crop, scale, ratio):
    """FFCV 1.0.2's ResizedCropRGBImageDecoder.generate_code, the crop keyed by the image:
    `crop(height, width, scale, ratio, key)` gets the image's key (data_pipeline.rng) where
    FFCV's gets none."""
    from ffcv.fields.rgb_image import IMAGE_MODES
    from ffcv.libffcv import imdecode, resize_crop
    from ffcv.pipeline.compiler import Compiler

    from data_pipeline.rng import STAGE_KEYS, sample_key

    jpg = IMAGE_MODES["jpg"]
    my_range = Compiler.get_iterator()
    imdecode_c, resize_crop_c = Compiler.compile(imdecode), Compiler.compile(resize_crop)
    crop_c = Compiler.compile(crop)
    scale = np.array(scale if scale is not None else (1.0, 1.0), dtype=np.float64)
    ratio = np.array(ratio if ratio is not None else (1.0, 1.0), dtype=np.float64)

    def decode(batch_indices, my_storage, metadata, storage_state):
        key = np.random.randint(0, STAGE_KEYS)
        destination, temp_storage = my_storage
        for dst_ix in my_range(len(batch_indices)):
            source_ix = batch_indices[dst_ix]
            field = metadata[source_ix]
            image_data = mem_read(field["data_ptr"], storage_state)
            height, width = np.uint32(field["height"]), np.uint32(field["width"])
            if field["mode"] == jpg:
                temp_buffer = temp_storage[dst_ix]
                imdecode_c(image_data, temp_buffer, height, width, height, width, 0, 0, 1, 1, False, False)
                temp_buffer = temp_buffer.reshape(-1)[: 3 * height * width].reshape(height, width, 3)
            else:
                temp_buffer = image_data.reshape(height, width, 3)
            i, j, h, w = crop_c(height, width, scale, ratio, sample_key(key, source_ix))
            resize_crop_c(temp_buffer, i, i + h, j, j + w, destination[dst_ix])
        return destination[: len(batch_indices)]

    decode.is_parallel = True
    return decode
