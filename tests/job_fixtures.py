"""Helpers shared by the tests that train through orch: a small Fashion-MNIST job, the raw
test set read without orch's code, and the Ray Train workers a test itself started."""

import gzip
from pathlib import Path

import numpy as np
import psutil
import torch

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "jobs" / "demo_fashion_mnist.yaml"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def small_job(data: Path, tmp: Path, workers: int, epochs: int = 2) -> list[str]:
    """Overrides for the demo job: a 2,000-image training subset, the full 10,000-image test set."""
    return [
        f"data.train={data / 'train.beton'}", f"data.val={data / 'val.beton'}",
        "data.max_train_samples=2000", f"training.epochs={epochs}", "training.batch_size=100",
        "schedule.warmup_epochs=0", "optimizer.lr=0.5", f"scaling.num_workers={workers}",
        f"scaling.cpus_per_worker={2 // workers}", f"checkpoint.storage={tmp / 'ckpt'}",
        "model.arch=cifar_resnet8",
    ]


def raw_fashion_mnist_test() -> tuple[torch.Tensor, torch.Tensor]:
    """The test set straight from Debian's IDX files: no FFCV, no orch data code."""
    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    x = torch.from_numpy(images.copy()).float().unsqueeze(1).repeat(1, 3, 1, 1)
    return x, torch.from_numpy(labels.astype(np.int64))


def train_workers(root_pid: int) -> list[psutil.Process]:
    """Ray Train workers started under `root_pid` (the test's own Ray), never another
    process's Ray on the machine."""
    found = []
    for proc in psutil.Process(root_pid).children(recursive=True):
        try:
            if "ray::RayTrainWorker" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            pass
    return found
