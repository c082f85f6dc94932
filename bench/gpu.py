"""orch's training step against a bare PyTorch loop on one GPU: same network, same batches.

    python bench/gpu.py [--arch resnet50] [--batch-size 256] [--steps 50] [--warmup 15] [--compile]

orch: `build_model(arch, 1000)` trained by `train_one_epoch` as the worker loop runs it: bf16
autocast, channels_last, SGD from orchestrator.train.optim, `configure_backends`, the LR set
every step, no fault hook. bare: torchvision's model of the same depth in a loop written as
NVIDIA's DeepLearningExamples and ffcv-imagenet write theirs. Both read the same synthetic
ImageNet-sized uint8 batches, made once on the GPU and normalized on the device as the GPU
loader does, so the data costs next to nothing and only the steps are compared.

Each variant is warmed up, then timed over --steps steps with torch.cuda.synchronize() at both
ends only, alternately (bare, orch, bare, orch, ...); the best of each is reported. Peak
memory counts the variant's own tensors (weights, gradients, momentum, activations), not the
shared batches. The last line is `ratio: X` (orch images/s over bare). Without CUDA it says
so and exits 0. Needs torch (and torchvision for the bare loop); runs from a copy of the tree.
"""

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data_pipeline.loaders import normalize_on_device  # noqa: E402
from orchestrator.models import build_model  # noqa: E402
from orchestrator.train.optim import build_optimizer  # noqa: E402
from orchestrator.train.steps import StepContext, configure_backends, train_one_epoch  # noqa: E402

TORCHVISION_TWINS = {f"resnet{depth}": f"resnet{depth}" for depth in (18, 34, 50, 101, 152)}
CLASSES, SIZE = 1000, 224
MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]  # 0-255 scale, as the loaders take them
STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]
# Both loops: SGD with momentum and orch's default weight decay, label smoothing as NVIDIA's.
LR, MOMENTUM, WEIGHT_DECAY, LABEL_SMOOTHING = 0.1, 0.9, 1e-4, 0.1
GIB = 2**30


class SyntheticBatches:
    """A few uint8 channels_last batches and int64 labels, made once on the GPU; `take(n)`
    hands over n of them in turn, each normalized on the device as the GPU loader does."""

    def __init__(self, batch_size: int, device: torch.device, distinct: int = 2):
        gen = torch.Generator(device=device).manual_seed(0)
        shape = (batch_size, SIZE, SIZE, 3)  # NHWC storage = channels_last NCHW
        self.images = [
            torch.randint(0, 256, shape, dtype=torch.uint8, device=device, generator=gen).permute(0, 3, 1, 2)
            for _ in range(distinct)
        ]
        self.labels = [torch.randint(0, CLASSES, (batch_size,), device=device, generator=gen) for _ in range(distinct)]
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1)

    def take(self, steps: int):
        for i in range(steps):
            j = i % len(self.images)
            yield normalize_on_device(self.images[j], self.mean, self.std), self.labels[j]


def orch_runner(arch: str, data: SyntheticBatches, device: torch.device, compile_model: bool):
    """orch's step: one `train_one_epoch` call over `steps` batches per run."""
    model = build_model(arch, CLASSES).to(device, memory_format=torch.channels_last)
    opt_spec = SimpleNamespace(momentum=MOMENTUM, nesterov=False, weight_decay=WEIGHT_DECAY, no_decay_norm_bias=False)
    optimizer = build_optimizer(model, opt_spec, LR)
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # as the loop makes it for bf16
    ctx = StepContext(device, "bf16", LABEL_SMOOTHING, lambda step: LR)
    stepped = torch.compile(model) if compile_model else model

    def run(steps: int) -> None:
        train_one_epoch(stepped, data.take(steps), optimizer, scaler, ctx, first_step=0)

    return run


def bare_runner(arch: str, data: SyntheticBatches, device: torch.device, compile_model: bool):
    """The reference loop: torchvision's model, autocast, backward, step; nothing else."""
    import torchvision

    model = getattr(torchvision.models, TORCHVISION_TWINS[arch])(num_classes=CLASSES)
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    stepped = torch.compile(model) if compile_model else model

    def run(steps: int) -> None:
        model.train()
        for images, labels in data.take(steps):
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                loss = F.cross_entropy(stepped(images), labels, label_smoothing=LABEL_SMOOTHING)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


@dataclass
class Variant:
    """One loop under test: its runner, the bytes it holds between runs, its best results."""

    label: str
    run: callable  # steps -> None
    resident: int = 0
    best_rate: float = 0.0
    peak: int = 0


def prepared(label: str, make_runner, warmup: int) -> Variant:
    """Build a variant and run its warm-up steps (cuDNN autotuning, compilation: untimed)."""
    before = torch.cuda.memory_allocated()
    variant = Variant(label, make_runner())
    variant.run(warmup)
    torch.cuda.synchronize()
    variant.resident = torch.cuda.memory_allocated() - before
    return variant


def measure(variant: Variant, steps: int, batch_size: int) -> None:
    """Time `steps` steps, synchronized at both ends only; keep the best rate and peak memory."""
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    variant.run(steps)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    rate = steps * batch_size / seconds
    print(f"  {variant.label}: {rate:,.0f} images/s", file=sys.stderr)
    variant.best_rate = max(variant.best_rate, rate)
    # What others hold (the other variant, the batches) is subtracted; this one's own state added.
    variant.peak = max(variant.peak, torch.cuda.max_memory_allocated() - held + variant.resident)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50", choices=sorted(TORCHVISION_TWINS))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=15, help="untimed steps per variant, first")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per variant, alternated")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU on this machine: bench/gpu.py measures nothing here")
        return 0
    device = torch.device("cuda")
    configure_backends(device)  # cudnn.benchmark and TF32, for both loops
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}", file=sys.stderr)
    data = SyntheticBatches(args.batch_size, device)
    suffix = " (compiled)" if args.compile else ""
    variants = [
        prepared(
            f"bare torchvision {args.arch}{suffix}",
            lambda: bare_runner(args.arch, data, device, args.compile),
            args.warmup,
        ),
        prepared(
            f"orch {args.arch} train_one_epoch{suffix}",
            lambda: orch_runner(args.arch, data, device, args.compile),
            args.warmup,
        ),
    ]
    for _ in range(args.rounds):
        for variant in variants:
            measure(variant, args.steps, args.batch_size)
    bare, orch = variants
    for variant in variants:
        print(f"{variant.label}: {variant.best_rate:,.0f} images/s, peak memory {variant.peak / GIB:.2f} GiB")
    print(f"ratio: {orch.best_rate / bare.best_rate:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
