"""Reading .beton headers and writing .beton files (fields `image`: RGBImageField, `label`: IntField)."""

import multiprocessing
from pathlib import Path

import numpy as np

from data_pipeline.ffcv_compat import FORMAT_VERSION, HEADER, checked_writer_class, fields, import_ffcv
from orchestrator.errors import DataError

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
    if size < HEADER.itemsize:
        raise _not_a_beton(path, f"{size} bytes is shorter than the header")
    header = np.fromfile(path, dtype=HEADER, count=1)[0]
    page_size = int(header["page_size"])
    if int(header["version"]) != FORMAT_VERSION:
        raise _not_a_beton(path, f"format version {int(header['version'])}, expected {FORMAT_VERSION}")
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

    images = [n for n, h in fields(reader).items() if isinstance(h, RGBImageField)]
    labels = [n for n, h in fields(reader).items() if isinstance(h, IntField)]
    if not images or not labels:
        raise DataError(
            f"{path}: has fields {list(fields(reader))}; orch needs an RGB image field and an int "
            "label field, as `orch data prepare` writes them"
        )
    label = "label" if "label" in labels else labels[0]
    return images[0], label


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

    writer_cls = checked_writer_class(writer_context())
    writer = writer_cls(
        str(path),
        {"image": image_field, "label": IntField()},
        page_size=page_size or 4 * MIN_PAGE_SIZE,
        num_workers=workers,
    )
    writer.desc = desc
    writer.from_indexed_dataset(dataset, chunksize=chunksize)


def writer_context():
    """The multiprocessing context the writer's processes start in (WRITER_START)."""
    context = multiprocessing.get_context(WRITER_START)
    context.set_forkserver_preload(_WRITER_PRELOAD)
    return context
