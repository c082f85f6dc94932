"""What orch costs over a bare PyTorch loop: the same model, data and batch, trained
through orch (Ray Train, one worker) and in one plain process.

    .venv/bin/python bench/overhead.py [--samples 30000] [--epochs 3] [--batch-size 128]   # about 14 minutes

Both read the same FFCV file with the same loader and the same training step; the bare loop
runs `train_one_epoch` directly. Images/s is the mean over the epochs after the first (the
first pays numba compilation and Ray start-up). The bare loop runs before and after orch and
the two are averaged, so that a machine that slows down or speeds up during the bench (other
load, a shared host) weighs on both sides alike. orch runs as `orch submit` does: on the lean
Ray it starts (ORCH_RAY_DASHBOARD=1 measures the full Ray instead). The last line is
`ratio: X` (orch over bare).
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data_pipeline import build_train_loader, read_dataset_info, write_fashion_mnist  # noqa: E402
from orchestrator.models import build_model  # noqa: E402
from orchestrator.spec import load_spec  # noqa: E402
from orchestrator.train.optim import build_optimizer  # noqa: E402
from orchestrator.train.schedule import lr_at, scaled_lr  # noqa: E402
from orchestrator.train.steps import StepContext, train_one_epoch  # noqa: E402


def bare(spec, epochs: int, label: str) -> list[float]:
    torch.set_num_threads(int(spec.scaling.cpus_per_worker))
    info = read_dataset_info(spec.data.train)
    loader = build_train_loader(
        spec.data.train,
        augment=spec.data.augment,
        batch_size=spec.training.batch_size,
        num_workers=int(spec.scaling.cpus_per_worker),
        seed=0,
        mean=info.mean,
        std=info.std,
        max_samples=spec.data.max_train_samples,
    )
    model = build_model(spec.model.arch, info.num_classes, **spec.model.options).to(memory_format=torch.channels_last)
    lr = scaled_lr(spec.optimizer.lr, spec.training.batch_size)
    optimizer = build_optimizer(model, spec.optimizer, lr)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    steps = len(loader)
    ctx = StepContext(torch.device("cpu"), "fp32", 0.0, lambda s: lr_at(s, steps, lr, spec.schedule, epochs))
    rates = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        rates.append(train_one_epoch(model, loader, optimizer, scaler, ctx, epoch * steps)["train_images_per_second"])
        print(f"  {label} epoch {epoch}: {rates[-1]:,.0f} images/s", file=sys.stderr)
    return rates


def through_orch(spec) -> list[float]:
    from orchestrator.runs import tracking
    from orchestrator.targets.local import run_local

    outcome = run_local(spec, progress_to_stderr=True)
    history = tracking.epoch_history(tracking.tracking_uri(spec), outcome.run_id, "train_images_per_second")
    return [history[epoch] for epoch in sorted(history)]


def steady(rates: list[float]) -> float:
    """Mean images/s over the epochs after the first (main() asks for at least 2)."""
    return sum(rates[1:]) / len(rates[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=30000, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="per run; at least 2 (the first is left out)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--data", default=None, help="a prepared Fashion-MNIST folder (default: written to a temp dir)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch of each run is left out")
    work = Path(tempfile.mkdtemp(prefix="orch-bench-"))
    data = Path(args.data) if args.data else work / "fmnist"
    if not (data / "train.beton").exists():
        write_fashion_mnist(Path("/usr/share/datasets/fashion-mnist"), data)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    spec = load_spec(
        ROOT / "jobs/demo_fashion_mnist.yaml",
        [
            f"data.train={data / 'train.beton'}",
            f"data.val={data / 'val.beton'}",
            f"data.max_train_samples={args.samples}",
            f"training.epochs={args.epochs}",
            f"training.batch_size={args.batch_size}",
            f"checkpoint.storage={work / 'ckpt'}",
            "schedule.warmup_epochs=0",
        ],
    )
    print(
        f"model {spec.model.arch}, {args.samples} Fashion-MNIST images x {args.epochs} epochs, "
        f"batch {args.batch_size}, {spec.scaling.cpus_per_worker:g} CPUs",
        file=sys.stderr,
    )
    started = time.perf_counter()
    before = steady(bare(spec, args.epochs, "bare (before)"))
    orch_rate = steady(through_orch(spec))
    after = steady(bare(spec, args.epochs, "bare (after)"))
    bare_rate = (before + after) / 2
    print(f"bare PyTorch loop:          {bare_rate:,.0f} images/s (before orch {before:,.0f}, after {after:,.0f})")
    print(f"orch (Ray Train, 1 worker): {orch_rate:,.0f} images/s")
    print(f"epochs 2-{args.epochs} of each; total bench time {time.perf_counter() - started:.0f}s", file=sys.stderr)
    print(f"ratio: {orch_rate / bare_rate:.3f}")


if __name__ == "__main__":
    main()
