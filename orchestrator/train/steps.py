"""One training epoch and one evaluation pass; both run on every rank."""

import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from orchestrator.train.distributed import all_reduce_sum
from orchestrator.train.metrics import EvalCounts
from orchestrator.train.optim import set_lr


@dataclass
class StepContext:
    """What a step needs besides the batch: built once per run."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    label_smoothing: float
    lr_for_step: callable  # global step -> learning rate
    before_step: callable = None  # global step -> None: the tests' fault hook (train/faults.py)


def autocast(ctx: StepContext):
    if ctx.precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if ctx.precision == "bf16" else torch.float16
    return torch.autocast(device_type=ctx.device.type, dtype=dtype)


def train_one_epoch(model, loader, optimizer, scaler, ctx: StepContext, first_step: int) -> dict:
    """Train over this rank's shard; returns loss and throughput summed over all ranks."""
    model.train()
    totals = torch.zeros(2, dtype=torch.float64)  # loss_sum, samples
    lr = ctx.lr_for_step(first_step)
    start = time.perf_counter()
    for i, (images, labels) in enumerate(loader):
        if ctx.before_step is not None:
            ctx.before_step(first_step + i)
        lr = ctx.lr_for_step(first_step + i)
        set_lr(optimizer, lr)
        with autocast(ctx):
            loss = F.cross_entropy(model(images), labels, label_smoothing=ctx.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        totals += torch.tensor([loss.item() * labels.numel(), labels.numel()], dtype=torch.float64)
    seconds = time.perf_counter() - start
    loss_sum, samples = all_reduce_sum(totals.to(_reduce_device(ctx))).cpu().tolist()
    return {
        "train_loss": loss_sum / max(samples, 1),
        "lr": lr,
        "train_images_per_second": samples / seconds,
        "train_samples": int(samples),
    }


@torch.no_grad()
def evaluate(model, loader, ctx: StepContext) -> dict:
    """Exact top-1/top-5 error and loss over the whole validation set, each sample once."""
    model.eval()
    counts = EvalCounts()
    for images, labels in loader:
        with autocast(ctx):
            logits = model(images)
        loss_sum = F.cross_entropy(logits.float(), labels, reduction="sum").item()
        counts.update(logits.float(), labels, loss_sum)
    return counts.reduce(device=_reduce_device(ctx))


def _reduce_device(ctx: StepContext) -> torch.device:
    # NCCL reduces only CUDA tensors; gloo only CPU ones.
    return ctx.device if ctx.device.type == "cuda" else torch.device("cpu")
