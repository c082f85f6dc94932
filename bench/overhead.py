"""What orch costs over a bare PyTorch loop: the same model, data and batch, trained
through orch (Ray Train, one worker) and in one plain process.

    .venv/bin/python bench/overhead.py [--samples 12000] [--epochs 3] [--batch-size 128]

Both read the same FFCV file with the same loader and the same training step; the bare loop
runs `train_one_epoch` directly. Images/s is taken from the last epoch (the first pays numba
compilation and Ray start-up). The last line is `ratio: X` (orch over bare).
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


def bare(spec, epochs: int) -> float:
    torch.set_num_threads(int(spec.scaling.cpus_per_worker))
    info = read_dataset_info(spec.data.train)
    loader = build_train_loader(
        spec.data.train, augment=spec.data.augment, batch_size=spec.training.batch_size,
        num_workers=int(spec.scaling.cpus_per_worker), seed=0, mean=info.mean, std=info.std,
        max_samples=spec.data.max_train_samples,
    )
    model = build_model(spec.model.arch, info.num_classes, **spec.model.options).to(memory_format=torch.channels_last)
    lr = scaled_lr(spec.optimizer.lr, spec.training.batch_size)
    optimizer = build_optimizer(model, spec.optimizer, lr)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    steps = len(loader)
    ctx = StepContext(torch.device("cpu"), "fp32", 0.0, lambda s: lr_at(s, steps, lr, spec.schedule, epochs))
    rate = 0.0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        rate = train_one_epoch(model, loader, optimizer, scaler, ctx, epoch * steps)["train_images_per_second"]
        print(f"  bare epoch {epoch}: {rate:,.0f} images/s", file=sys.stderr)
    return rate


def through_orch(spec) -> float:
    from orchestrator.targets.local import run_local

    outcome = run_local(spec, progress_to_stderr=True)
    return outcome["metrics"]["train_images_per_second"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--data", default=None, help="a prepared Fashion-MNIST folder (default: written to a temp dir)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orch-bench-"))
    data = Path(args.data) if args.data else work / "fmnist"
    if not (data / "train.beton").exists():
        write_fashion_mnist(Path("/usr/share/datasets/fashion-mnist"), data)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    spec = load_spec(ROOT / "jobs/demo_fashion_mnist.yaml", [
        f"data.train={data / 'train.beton'}", f"data.val={data / 'val.beton'}",
        f"data.max_train_samples={args.samples}", f"training.epochs={args.epochs}",
        f"training.batch_size={args.batch_size}", f"checkpoint.storage={work / 'ckpt'}",
        "tracking.system_metrics=false", "schedule.warmup_epochs=0",
    ])
    print(f"model {spec.model.arch}, {args.samples} Fashion-MNIST images x {args.epochs} epochs, "
          f"batch {args.batch_size}, {spec.scaling.cpus_per_worker:g} CPUs", file=sys.stderr)
    started = time.perf_counter()
    bare_rate = bare(spec, args.epochs)
    orch_rate = through_orch(spec)
    print(f"bare PyTorch loop:        {bare_rate:,.0f} images/s (last epoch)")
    print(f"orch (Ray Train, 1 worker): {orch_rate:,.0f} images/s (last epoch)")
    print(f"total bench time {time.perf_counter() - started:.0f}s", file=sys.stderr)
    print(f"ratio: {orch_rate / bare_rate:.3f}")


if __name__ == "__main__":
    main()
