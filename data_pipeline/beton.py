"""Reading .beton headers and writing .beton files (fields `image`: RGBImageField, `label`: IntField)."""

import ctypes
import multiprocessing
import os
import queue
import sys
import time
from multiprocessing.queues import Queue
from pathlib import Path

import numpy as np

from data_pipeline.ffcv_compat import import_ffcv, memory_allocator
from orchestrator.errors import DataError

# FFCV 1.0.2's file header (ffcv.types.HeaderType), repeated here so that reading a header
# does not import ffcv and numba (seconds) in commands that only need the sample count.
_HEADER = np.dtype(
    [
        ("version", "<u2"),
        ("num_fields", "<u2"),
        ("page_size", "<u4"),
        ("num_samples", "<u8"),
        ("alloc_table_ptr", "<u8"),
    ],
    align=True,
)
_VERSION = 2
MIN_PAGE_SIZE = 1 << 21
# The writer's processes come from a fork server, never forked from the caller: `orch data
# prepare` may run where MLflow, Ray or numba hold threads, and a child forked while another
# thread holds a lock (logging's, the allocator's) can wait on it forever. The server imports
# FFCV's writer once; each process it forks starts from that clean state.
WRITER_START = "forkserver"
_WRITER_PRELOAD = ["ffcv.writer", "data_pipeline.beton"]


def _not_a_beton(path: Path, why: str) -> DataError:
    return DataError(f"{path}: not an FFCV .beton file ({why}); write one with `orch data prepare`")


def read_header(path) -> np.void:
    """The header of a .beton file, checked; DataError naming the file otherwise."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file; write it with `orch data prepare`")
    if not path.is_file():
        raise _not_a_beton(path, "it is a folder")
    size = path.stat().st_size
    if size < _HEADER.itemsize:
        raise _not_a_beton(path, f"{size} bytes is shorter than the header")
    header = np.fromfile(path, dtype=_HEADER, count=1)[0]
    page_size = int(header["page_size"])
    if int(header["version"]) != _VERSION:
        raise _not_a_beton(path, f"format version {int(header['version'])}, expected {_VERSION}")
    if not 1 <= int(header["num_fields"]) <= 256 or page_size < MIN_PAGE_SIZE or page_size & (page_size - 1):
        raise _not_a_beton(path, "its header is invalid")
    if int(header["alloc_table_ptr"]) > size:
        raise _not_a_beton(path, "it is truncated")
    return header


def num_samples(beton_path) -> int:
    """Number of samples in a .beton, read from its header (no ffcv import)."""
    return int(read_header(beton_path)["num_samples"])


def open_reader(beton_path):
    """An ffcv Reader for a checked .beton; DataError if its field table cannot be read."""
    read_header(beton_path)
    import_ffcv()
    from ffcv.reader import Reader

    try:
        return Reader(str(beton_path))
    except Exception as exc:  # corrupt field table or metadata: any ffcv/numpy error
        raise _not_a_beton(Path(beton_path), f"{type(exc).__name__}: {exc}") from None


def image_and_label_fields(reader, path) -> tuple[str, str]:
    """Names of the RGB image field and the integer label field of a reader's file."""
    from ffcv.fields import IntField, RGBImageField

    images = [n for n, h in reader.handlers.items() if isinstance(h, RGBImageField)]
    labels = [n for n, h in reader.handlers.items() if isinstance(h, IntField)]
    if not images or not labels:
        raise DataError(
            f"{path}: has fields {list(reader.handlers)}; orch needs an RGB image field and an int "
            "label field, as `orch data prepare` writes them"
        )
    label = "label" if "label" in labels else labels[0]
    return images[0], label


def field_metadata(reader, name: str) -> np.ndarray:
    """Per-sample metadata of one field (image: mode/width/height; int: the value)."""
    return reader.metadata[f"f{reader.field_names.index(name)}"]


def page_size_for(max_sample_bytes: int) -> int:
    """FFCV's default page (8 MiB), or the next power of two that holds the largest sample."""
    size = 4 * MIN_PAGE_SIZE
    while size < max_sample_bytes + 4096:
        size *= 2
    return size


def write_beton(
    path, dataset, image_field, *, workers: int, desc: str, page_size: int | None = None, chunksize: int = 100
) -> None:
    """Write `dataset` (indexable, items (HxWx3 uint8 array, int)) to `path` with a progress bar.

    Every item must be readable: FFCV cannot skip a sample once the count is in the header.
    """
    import_ffcv()
    from ffcv.fields import IntField

    writer_cls = _checked_writer_class()
    writer = writer_cls(
        str(path),
        {"image": image_field, "label": IntField()},
        page_size=page_size or 4 * MIN_PAGE_SIZE,
        num_workers=workers,
    )
    writer.desc = desc
    writer.from_indexed_dataset(dataset, chunksize=chunksize)


def _checked_writer_class():
    from ffcv.writer import DatasetWriter

    class CheckedWriter(DatasetWriter):
        """DatasetWriter whose main loop notices dead workers.

        FFCV's own loop waits for the sample counter to reach the total, so a worker that
        raises (an unreadable image, a sample larger than a page) hangs the write forever.
        """

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

            context = writer_context()
            work: Queue = context.Queue()
            for todo in queue_content:
                work.put(todo)
            for _ in range(self.num_workers):
                work.put(None)
            allocations: Queue = context.Queue()
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


def writer_context():
    """The multiprocessing context the writer's processes start in (WRITER_START)."""
    context = multiprocessing.get_context(WRITER_START)
    context.set_forkserver_preload(_WRITER_PRELOAD)
    return context


def _raise_if_failed(processes, fname) -> None:
    for p in processes:
        if p.exitcode not in (None, 0):
            raise DataError(
                f"writing {os.path.basename(fname)} failed: a writer process exited with code "
                f"{p.exitcode} (its error is printed above)"
            )


def _get_alive(q: Queue, processes, fname):
    while True:
        try:
            return q.get(timeout=0.5)
        except queue.Empty:
            _raise_if_failed(processes, fname)
