"""fp32 against bf16 autocast on this CPU: orch's training step (train/steps.py's autocast, the
model channels_last as orch trains it) for the demo's net (cifar_resnet20) and ResNet-56, at the
demo's batch (128 of 28x28 images), the measurement behind what `precision: auto` picks on CPUs
(orchestrator/train/precision.py).

    .venv/bin/python bench/precision.py [--threads 2] [--steps 20] [--rounds 3]   # about 2 minutes

Each round times --steps optimizer steps of each (net, precision) after 3 warm-up steps, the
precisions alternating, so that a machine that slows down during the bench weighs on both;
images/s is the best round's. Printed per net: fp32 and bf16 images/s and bf16's ratio over
fp32; then what `auto` picks on this CPU and why. The last line is `ratio: X`, the demo net's.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.models import build_model  # noqa: E402
from orchestrator.train.precision import choose_precision, cpu_info  # noqa: E402
from orchestrator.train.steps import StepContext, autocast  # noqa: E402

NETS = ("cifar_resnet20", "cifar_resnet56")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch threads (the demo's cpus_per_worker)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    return p.parse_args(argv)


class Stepper:
    """One net in one precision: a model, its optimizer and a fixed batch."""

    def __init__(self, arch: str, precision: str, batch_size: int):
        torch.manual_seed(0)
        self.model = build_model(arch, 10).to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.ctx = StepContext(torch.device("cpu"), precision, 0.0, lambda step: 0.01)
        self.x = torch.randn(batch_size, 3, 28, 28).contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, 10, (batch_size,))

    def steps(self, n: int) -> float:
        """Images/s over n steps."""
        start = time.perf_counter()
        for _ in range(n):
            with autocast(self.ctx):
                loss = F.cross_entropy(self.model(self.x), self.y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return n * len(self.x) / (time.perf_counter() - start)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = cpu_info()
    print(f"{cpu.vendor}, native bf16: {cpu.native_bf16}; {args.threads} threads, batch {args.batch_size}", flush=True)
    ratios = {}
    for arch in NETS:
        steppers = {p: Stepper(arch, p, args.batch_size) for p in ("fp32", "bf16")}
        best = dict.fromkeys(steppers, 0.0)
        for stepper in steppers.values():
            stepper.steps(3)  # warm-up: oneDNN's primitives, allocations
        for _ in range(args.rounds):
            for precision, stepper in steppers.items():
                best[precision] = max(best[precision], stepper.steps(args.steps))
        ratios[arch] = best["bf16"] / best["fp32"]
        print(
            f"{arch}: fp32 {best['fp32']:.0f} images/s, bf16 {best['bf16']:.0f} images/s, bf16/fp32 {ratios[arch]:.2f}",
            flush=True,
        )
    print(f"precision auto here: {choose_precision('auto', 'cpu', cpu)}")
    print(f"ratio: {ratios[NETS[0]]:.2f}")


if __name__ == "__main__":
    main()
