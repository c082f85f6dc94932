"""FFCV datasets for orch: writers (`orch data prepare`), inspection and the training loaders.

Importing this package does not import ffcv (seconds of numba start-up); the functions that
need it do.
"""

from data_pipeline.beton import num_samples
from data_pipeline.fashion_mnist import write_fashion_mnist
from data_pipeline.imagefolder import WriterOptions, write_imagefolder
from data_pipeline.info import DatasetInfo, read_dataset_info
from data_pipeline.inspection import inspect_beton
from data_pipeline.loaders import TrainLoader, ValLoader, build_train_loader, build_val_loader
from data_pipeline.schedule import ResolutionSchedule, val_shard

__all__ = [
    "DatasetInfo",
    "ResolutionSchedule",
    "TrainLoader",
    "ValLoader",
    "WriterOptions",
    "build_train_loader",
    "build_val_loader",
    "inspect_beton",
    "num_samples",
    "read_dataset_info",
    "val_shard",
    "write_fashion_mnist",
    "write_imagefolder",
]
