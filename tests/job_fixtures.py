"""Helpers shared by the tests that train through orch: small Fashion-MNIST jobs and data, the raw
test set read without orch's code, `orch` in a subprocess, and the training loop's fault hook."""

import gzip
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "jobs" / "demo_fashion_mnist.yaml"
FASHION = Path("/usr/share/datasets/fashion-mnist")
SMALL_TRAIN, SMALL_VAL = 2000, 1000  # the small_fashion fixture's images
_IDX = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def small_job(data: Path, tmp: Path, workers: int, epochs: int = 2) -> list[str]:
    """Overrides for the demo job: ResNet-8, at most 2,000 training images, all of data's val.beton."""
    return [
        f"data.train={data / 'train.beton'}",
        f"data.val={data / 'val.beton'}",
        "data.max_train_samples=2000",
        f"training.epochs={epochs}",
        "training.batch_size=100",
        "schedule.warmup=null",
        "optimizer.lr=0.5",
        f"scaling.num_workers={workers}",
        f"scaling.cpus_per_worker={2 // workers}",
        f"checkpoint.storage={tmp / 'ckpt'}",
        "model.arch=cifar_resnet8",
        # Each worker node's monitor imports MLflow (seconds); tests/test_imagenet_path.py checks it.
        "tracking.system_metrics=false",
        # Saving the model as an MLflow model takes seconds; tests/test_dashboard.py checks it on
        # the session's trained run.
        "tracking.log_model=false",
        # A point every 5 steps (20 steps an epoch at most here) rather than every step.
        "tracking.log_every_n_steps=5",
    ]


def as_set_args(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def write_fashion_subset(out: Path, train: int, val: int) -> Path:
    """The first `train` training and `val` test images of Fashion-MNIST, through orch's writer."""
    from data_pipeline import write_fashion_mnist

    source = out / "idx"
    source.mkdir()
    for split, count in (("train", train), ("val", val)):
        for name, header, size in zip(_IDX[split], (16, 8), (28 * 28, 1)):
            with gzip.open(FASHION / name) as f:
                data = bytearray(f.read())
            data[4:8] = count.to_bytes(4, "big")
            with gzip.open(source / name, "wb") as f:
                f.write(bytes(data[: header + count * size]))
    write_fashion_mnist(source, out / "data", workers=1)
    return out / "data"


def raw_fashion_mnist_test(count: int = 10000) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` test images straight from Debian's IDX files: no FFCV, no orch data code."""
    with gzip.open(FASHION / _IDX["val"][0]) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:count]
    with gzip.open(FASHION / _IDX["val"][1]) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:count]
    x = torch.from_numpy(images.copy()).float().unsqueeze(1).repeat(1, 3, 1, 1)
    return x, torch.from_numpy(labels.astype(np.int64))


def orch_process(
    *args, cwd, uri: str, ray_address: str | None = None, fault: str | None = None, **popen
) -> subprocess.Popen:
    """`orch ARGS` as a user runs it, in its own process; with `ray_address` it joins that Ray
    (the session's) instead of starting one."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "ORCH_TEST_FAULT")}
    env["MLFLOW_TRACKING_URI"] = uri
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    if fault:
        env["ORCH_TEST_FAULT"] = fault
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli.main", *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


class TimedLines(threading.Thread):
    """A stream read line by line in the background: [(time.monotonic() it arrived, line)]."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream, self.lines = stream, []
        self.start()

    def run(self):
        for line in self.stream:
            self.lines.append((time.monotonic(), line))

    def text(self, timeout_s: float = 60) -> str:
        self.join(timeout_s)
        return "".join(line for _, line in self.lines)


def communicate_timed(proc: subprocess.Popen, timeout_s: float) -> tuple[str, TimedLines]:
    """Like proc.communicate(): its stdout once it exits, and its stderr lines as they arrived."""
    out, err = TimedLines(proc.stdout), TimedLines(proc.stderr)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return out.text(), err


def fault(action: str, epoch: int, step: int, rank: int | None = None, notify: Path | None = None, **extra) -> str:
    """$ORCH_TEST_FAULT for orchestrator/train/faults.py: act before `step` of `epoch`."""
    spec = {"action": action, "epoch": epoch, "step": step, **extra}
    if rank is not None:
        spec["rank"] = rank
    if notify is not None:
        spec["notify"] = str(notify)
    return json.dumps(spec)


class Notice:
    """A FIFO the fault hook writes one line to just before it acts. `wait()` blocks until then:
    opening a FIFO for reading waits for its writer, so nothing is timed or polled."""

    def __init__(self, folder: Path):
        self.path = folder / "fault.fifo"
        os.mkfifo(self.path)

    def wait(self, timeout_s: float = 300) -> str:
        return self.wait_for(1, timeout_s)[0]

    def wait_for(self, count: int, timeout_s: float = 300) -> list[str]:
        """The first `count` lines, from as many writers (each opens the FIFO, writes, closes)."""
        said = []

        def read():
            while len(said) < count:
                with self.path.open() as fifo:  # until a writer opens it
                    said.extend(line for line in fifo if line.strip())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout_s)
        assert len(said) >= count, f"the fault hook acted {len(said)} times of {count} within {timeout_s:.0f} s"
        return said[:count]
