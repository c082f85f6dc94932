"""One training epoch and one evaluation pass; both run on every rank.

Neither reads a tensor back to the host inside its batch loop: losses and counts are summed
on the device and read once at the end, so the host can queue work ahead of a GPU. Imports
with torch alone (bench/gpu.py runs it where Ray, pydantic and FFCV are not installed).
"""

import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from orchestrator.train.distributed import all_reduce_max, world_size
from orchestrator.train.metrics import EvalCounts, counts_to_metrics
from orchestrator.train.optim import set_lr


@dataclass
class EpochProgress:
    """How far an epoch got: `batches` trained (on every rank), and the loss, samples and top-1
    and top-5 hits of those batches summed over all ranks; a step checkpoint carries it, so a
    resumed epoch's train_loss and training errors still cover the whole epoch."""

    batches: int = 0
    loss_sum: float = 0.0
    samples: int = 0
    top1: float = 0.0
    top5: float = 0.0

    def counts(self) -> torch.Tensor:
        """As EvalCounts orders them: [top1, top5, n, loss_sum]."""
        return torch.tensor([self.top1, self.top5, self.samples, self.loss_sum], dtype=torch.float64)


@dataclass
class StepContext:
    """What a step needs besides the batch: built once per run."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    label_smoothing: float
    lr_for_step: callable  # global step -> learning rate
    before_step: callable = None  # global step -> None: the tests' fault hook (train/faults.py)
    after_step: callable = None  # (global step, loss on the device, lr, batch size) -> None: step metrics


def configure_backends(device: torch.device, deterministic: bool = False) -> None:
    """On CUDA: cuDNN picks the fastest convolution algorithms for the shapes it sees, and
    float32 matmuls and convolutions may use TF32, as NVIDIA's reference scripts set them.
    deterministic=True (training.deterministic) instead asks PyTorch for deterministic
    algorithms everywhere: no autotuning, no TF32, cuBLAS with a fixed workspace; on GPUs this
    costs throughput (NVIDIA's and PyTorch's notes put it at several to tens of percent,
    depending on the model) and an op with no deterministic version raises. Process-wide
    settings: call once per worker, before CUDA is first used."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        return
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default; set so the choice is stated here
    torch.set_float32_matmul_precision("high")  # TF32 matmuls


def autocast(ctx: StepContext):
    if ctx.precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if ctx.precision == "bf16" else torch.float16
    return torch.autocast(device_type=ctx.device.type, dtype=dtype)


class TimedBatches:
    """Iterates a loader and holds `waited`: the seconds spent waiting for it to hand over
    the batches (starting the iterator included)."""

    def __init__(self, loader):
        self.loader = loader
        self.waited = 0.0

    def __iter__(self):
        start = time.perf_counter()
        iterator = iter(self.loader)
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                self.waited += time.perf_counter() - start
                return
            self.waited += time.perf_counter() - start
            yield batch
            start = time.perf_counter()


def train_one_epoch(
    model, loader, optimizer, scaler, ctx: StepContext, first_step: int, start: EpochProgress = None, at_step=None
) -> dict | None:
    """Train over this rank's shard, from batch `start.batches` on (the loader skips the ones
    before it). Returns the mean loss, the training top-1/top-5 error (counted exactly on the
    batches as they were trained: augmented, in train mode, before each step's update) and the
    samples, all summed over the ranks (the carried part of the epoch included), images/s (this
    attempt's samples of all ranks over this rank's time), and data_wait_fraction: the largest
    share of any rank's time spent waiting for its loader.

    `at_step(i, progress)`, called before batch i on every rank, may write a step checkpoint
    (calling `progress()`, a collective, for the epoch's progress so far) and returns True to
    stop: the epoch then returns None."""
    start = start or EpochProgress()
    model.train()
    counts = EvalCounts()  # [top1, top5, n, loss_sum] on the device: no sync per step
    samples = 0
    lr = ctx.lr_for_step(first_step + start.batches)
    batches = TimedBatches(loader)
    began = time.perf_counter()
    for i, (images, labels) in enumerate(batches, start=start.batches):
        if ctx.before_step is not None:
            ctx.before_step(first_step + i)
        if at_step is not None and at_step(i, partial(_progress, i, start, counts, ctx)):
            return None
        lr = ctx.lr_for_step(first_step + i)
        set_lr(optimizer, lr)
        with autocast(ctx):
            logits = model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=ctx.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        counts.update(logits, labels, loss.detach() * labels.numel())
        samples += labels.numel()
        if ctx.after_step is not None:
            ctx.after_step(first_step + i, loss, lr, labels.numel())
    _synchronize(ctx.device)
    seconds = time.perf_counter() - began
    total = counts.summed(_reduce_device(ctx)) + start.counts()
    metrics = counts_to_metrics(total, split="train")
    metrics.update(
        lr=lr,
        train_images_per_second=samples * world_size() / seconds,  # every rank trains as many
        data_wait_fraction=_max_over_ranks(batches.waited / max(seconds, 1e-9), ctx),
    )
    return metrics


def _progress(batches: int, start: EpochProgress, counts: EvalCounts, ctx) -> EpochProgress:
    """The epoch's progress before batch `batches`, over all ranks (a collective; one host read)."""
    top1, top5, n, loss_sum = (counts.summed(_reduce_device(ctx)) + start.counts()).tolist()
    return EpochProgress(batches, loss_sum, int(n), top1, top5)


@torch.no_grad()
def evaluate(model, loader, ctx: StepContext) -> dict:
    """Exact top-1/top-5 error and loss over the whole validation set, each sample once."""
    model.eval()
    counts = EvalCounts()
    for images, labels in loader:
        with autocast(ctx):
            logits = model(images)
        logits = logits.float()  # bf16/fp16 logits: rank and score in float32
        counts.update(logits, labels, F.cross_entropy(logits, labels, reduction="sum"))
    return counts.reduce(device=_reduce_device(ctx))


def _reduce_device(ctx: StepContext) -> torch.device:
    # NCCL reduces only CUDA tensors; gloo only CPU ones.
    return ctx.device if ctx.device.type == "cuda" else torch.device("cpu")


def _max_over_ranks(value: float, ctx: StepContext) -> float:
    """The largest of the ranks' values (a collective: every rank must call it)."""
    tensor = torch.tensor([value], dtype=torch.float64, device=_reduce_device(ctx))
    return all_reduce_max(tensor).cpu().tolist()[0]


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so host time covers it (after the loop only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
