"""FFCV datasets for orch: writers (`orch data prepare`), inspection, crop geometry and the training loaders.
May import: nothing of orchestrator but its leaves (errors).

Importing this package imports nothing but itself: each name loads its module when first
used, so ffcv and numba (seconds of start-up), PIL and tqdm load only where they are needed,
and `data_pipeline.loaders` imports on a machine with torch alone (bench/gpu.py). Every FFCV
internal orch relies on is in ffcv_compat.py.
"""

from importlib import import_module

_HOMES = {
    "num_samples": "beton",
    "write_fashion_mnist": "fashion_mnist",
    "WriterOptions": "imagefolder",
    "write_imagefolder": "imagefolder",
    "DatasetInfo": "info",
    "read_dataset_info": "info",
    "inspect_beton": "inspection",
    "TrainLoader": "loaders",
    "ValLoader": "loaders",
    "build_train_loader": "loaders",
    "build_val_loader": "loaders",
    "ResolutionSchedule": "schedule",
    "val_shard": "schedule",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'data_pipeline' has no attribute {name!r}")
    return getattr(import_module(f"data_pipeline.{_HOMES[name]}"), name)
