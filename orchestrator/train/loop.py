"""The Ray Train worker loop: `train_worker(config)` runs on every rank.

Per epoch: train on this rank's shard, evaluate every validation sample once across ranks,
rank 0 writes a checkpoint, and every rank calls `ray.train.report` (a barrier). MLflow
logging happens on the Ray Train controller (orchestrator.epoch_logger), once per epoch.

Between steps, every rank agrees whether to stop (train/stopping.py): on a SIGTERM or `orch
stop --save`, and every checkpoint.every_n_steps steps, rank 0 writes a step checkpoint
(epoch_NNNN_step_SSSSSS) holding the epoch's progress. A run restored from one continues that
epoch after its last trained batch, with the same data order, augmentation draws and schedule.
"""

import functools
import logging
import random
import socket
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np
import ray.train
import torch
from torch.nn.parallel import DistributedDataParallel

from data_pipeline import ResolutionSchedule, build_train_loader, build_val_loader, read_dataset_info
from data_pipeline.geometry import eval_style
from orchestrator import telemetry
from orchestrator.best import BestRule
from orchestrator.models import build_model
from orchestrator.spec.schema import JobSpec
from orchestrator.train import distributed as dist
from orchestrator.train import faults
from orchestrator.train.checkpoint import checkpoint_name, load_model_state, load_train_state, save_checkpoint, verify
from orchestrator.train.optim import build_optimizer
from orchestrator.train.schedule import lr_at, scaled_lr
from orchestrator.train.step_metrics import StepLogger, every_n_steps
from orchestrator.train.steps import EpochProgress, StepContext, configure_backends, evaluate, train_one_epoch
from orchestrator.train.stopping import NONE, PREEMPTED, REASONS, STOP, StopRequests, StopWatcher

logger = logging.getLogger(__name__)


@dataclass
class Start:
    """Where a worker group starts: the epoch to train, and how far into it (a step checkpoint's)."""

    epoch: int = 0
    progress: EpochProgress | None = None


class Preempted(RuntimeError):
    """Raised on every rank after the step checkpoint a SIGTERM asked for: the worker group
    fails and Ray Train restarts it from that checkpoint (within training.max_failures)."""


def train_worker(config: dict) -> None:
    spec = JobSpec.model_validate(config["spec"])
    device = _device(spec)
    configure_backends(device, spec.training.deterministic)  # cuDNN autotuning and TF32, unless deterministic
    info = read_dataset_info(spec.data.train)
    num_classes = spec.model.num_classes or info.num_classes
    train_loader, val_loader = _loaders(spec, info, device)

    torch.manual_seed(spec.training.seed)  # the initial weights follow training.seed
    model = build_model(spec.model.arch, num_classes, **spec.model.options)
    memory_format = torch.channels_last if spec.training.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    base_lr = scaled_lr(spec.optimizer.lr, spec.training.batch_size * dist.world_size())
    optimizer = build_optimizer(model, spec.optimizer, base_lr)
    precision = resolve_precision(spec.training.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    start, restored = _restore(config, model, optimizer, scaler)
    wrapped = _wrap(model, device, spec.training.compile)
    steps_per_epoch = len(train_loader)
    ctx = StepContext(
        device=device,
        precision=precision,
        label_smoothing=spec.optimizer.label_smoothing,
        lr_for_step=lambda step: lr_at(step, steps_per_epoch, base_lr, spec.schedule, spec.training.epochs),
        before_step=faults.step_hook(config.get("fault"), dist.rank(), steps_per_epoch, fresh=not restored),
    )
    run = config.get("run") or {}
    step_logger = StepLogger(
        run.get("tracking_uri"),
        run.get("run_id"),
        every=every_n_steps(steps_per_epoch, spec.tracking.log_every_n_steps),
        world_size=dist.world_size(),
        active=dist.is_main(),
    )
    step_logger.tag_steps_per_epoch(steps_per_epoch)
    ctx.after_step = step_logger
    meta_base = {
        "arch": spec.model.arch,
        "num_classes": num_classes,
        "classes": info.classes,
        "spec": config["spec"],
        "preprocess": preprocess_info(spec, info),
    }
    # Told once, with the first report: where this worker group runs (the controller tags the
    # run with every rank's), and what it was restored from.
    reporter = Reporter(model, optimizer, scaler, spec, meta_base, once={**restored, **worker_placement()})
    stops = StopRequests()
    local_rank = ray.train.get_context().get_local_rank()
    with (
        telemetry.node_monitor(config.get("telemetry"), local_rank, reporter.once["worker_node_id"]),
        StopWatcher(run.get("tracking_uri"), run.get("run_id")),
        step_logger,
    ):
        for epoch in range(start.epoch, spec.training.epochs):
            progress = start.progress if epoch == start.epoch else None
            seed_everything(spec.training.seed, epoch, dist.rank())
            train_loader.set_epoch(epoch, skip_batches=progress.batches if progress else 0)
            began = time.perf_counter()
            at_step = step_checkpoints(spec, epoch, steps_per_epoch, stops, reporter, progress)
            first_step = epoch * steps_per_epoch
            metrics = train_one_epoch(wrapped, train_loader, optimizer, scaler, ctx, first_step, progress, at_step)
            if metrics is None:
                return  # stopped by `orch stop --save`: its checkpoint is written
            metrics.update(evaluate(wrapped, val_loader(), ctx))
            metrics.update(
                epoch=epoch, epoch_seconds=time.perf_counter() - began, train_resolution=train_loader.resolution
            )
            reporter.report(metrics, epoch=epoch, step=(epoch + 1) * steps_per_epoch)


def step_checkpoints(spec: JobSpec, epoch: int, steps_per_epoch: int, stops: StopRequests, reporter, start):
    """train_one_epoch's at_step for `epoch`: before each batch, every rank agrees on the stop
    requests; a request, or checkpoint.every_n_steps coming due, writes a step checkpoint (none
    when nothing was trained since the last checkpoint). A preemption then fails the worker
    group (Preempted), a stop ends training."""
    every = spec.checkpoint.every_n_steps
    saved = {"batch": start.batches if start else 0}  # what the checkpoint restored from, or the last epoch's, covers

    def at_step(batch: int, progress) -> bool:
        reason = stops.agree()
        due = every is not None and (epoch * steps_per_epoch + batch) % every == 0
        if reason == NONE and not due:
            return False
        where = f"epoch {epoch}, after {batch} of its {steps_per_epoch} batches"
        if batch > saved["batch"]:
            reporter.report_step(epoch, epoch * steps_per_epoch + batch, progress(), REASONS.get(reason, ""))
            saved["batch"] = batch
        elif reason == STOP:  # nothing new to save: the last checkpoint is where a resume continues
            reporter.report_stop(epoch, batch, REASONS[STOP])
        if reason == PREEMPTED:
            raise Preempted(f"a worker got SIGTERM (preemption) at {where}; Ray Train restarts from its checkpoint")
        return reason == STOP

    return at_step


def worker_placement() -> dict:
    """This worker's rank, host and Ray node, reported once per worker group (the controller
    sees every rank's report, so no collective is needed to gather them)."""
    return {
        "worker_rank": dist.rank(),
        "worker_hostname": socket.gethostname(),
        "worker_node_id": ray.get_runtime_context().get_node_id(),
    }


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' is bf16 on GPUs and fp32 on CPUs, where bf16 autocast is slow."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def preprocess_info(spec: JobSpec, info) -> dict:
    """What an evaluator needs to feed the model as training did (0-255 scale)."""
    size = info.image_size if eval_style(spec.data.augment) == "cifar" else spec.data.resolution.val_res
    return {"size": size, "mean": list(info.mean), "std": list(info.std), "augment": spec.data.augment}


def seed_everything(seed: int, epoch: int, rank: int) -> None:
    """Reseeding from (seed, epoch, rank) makes a resumed epoch draw what an uninterrupted one would."""
    value = (seed * 1_000_003 + epoch * 1009 + rank) % (2**31)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def _device(spec: JobSpec) -> torch.device:
    if spec.scaling.use_gpu:
        return ray.train.torch.get_device()
    return torch.device("cpu")


def _loaders(spec: JobSpec, info, device: torch.device):
    data = spec.data
    # Any number of loader threads draws the same augmentations (data_pipeline.rng).
    workers = data.num_workers or max(1, int(spec.scaling.cpus_per_worker))
    res = data.resolution
    common = dict(
        augment=data.augment,
        batch_size=spec.training.batch_size,
        num_workers=workers,
        mean=info.mean,
        std=info.std,
        device=str(device),
        channels_last=spec.training.channels_last,
        in_memory=data.in_memory,
    )
    train = build_train_loader(
        data.train,
        seed=spec.training.seed,
        resolution=ResolutionSchedule(res.min_res, res.max_res, res.start_epoch, res.end_epoch),
        distributed=dist.world_size() > 1,
        max_samples=data.max_train_samples,
        short_side=(data.paper.short_side_min, data.paper.short_side_max),
        lighting=data.paper.lighting,
        **common,
    )
    # Built when the first evaluation needs it: its pipeline's compilation is then off the time
    # to the first training step (preflight checked the file before the job started).
    shard = {"rank": dist.rank(), "world_size": dist.world_size()}
    val = functools.cache(lambda: build_val_loader(data.val, resolution=res.val_res, **shard, **common))
    return train, val


def _restore(config: dict, model, optimizer, scaler) -> tuple[Start, dict]:
    """Load the checkpoint this worker group continues from: the one Ray hands over after a
    failure (chosen by orchestrator.restart's keeper on the controller), else the one `orch
    resume` chose. Returns where training starts and, when something was restored,
    {"restored_from": location}."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        location, fs = checkpoint.path, checkpoint.filesystem
    elif config.get("resume_from"):
        location, fs = config["resume_from"], None
    else:
        return Start(), {}
    verify(location, fs)  # damaged since it was chosen: this attempt fails, the next chooses again
    with ray.train.Checkpoint(location, filesystem=fs).as_directory() as path:
        start = _load_into(path, model, optimizer, scaler)
    return start, {"restored_from": location}


def _load_into(path, model, optimizer, scaler) -> Start:
    model.load_state_dict(load_model_state(path))
    state = load_train_state(path)
    optimizer.load_state_dict(state["optimizer"])
    if scaler.is_enabled() and state["scaler"]:
        # An fp16 run's loss scale carries on; one saved without a scaler (bf16, fp32) leaves a
        # fresh fp16 scaler to start its own, and bf16/fp32 ignore a saved one: precision may
        # change on resume (or differ on the CPU a GPU run resumes on).
        scaler.load_state_dict(state["scaler"])
    if state.get("progress"):  # a step checkpoint: that epoch goes on
        return Start(int(state["epoch"]), EpochProgress(**state["progress"]))
    return Start(int(state["epoch"]) + 1)


def _wrap(model, device: torch.device, compile_model: bool):
    if dist.world_size() > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model) if compile_model else model


class Reporter:
    """This rank's part of each report: rank 0 writes the checkpoint, every rank calls
    ray.train.report (a barrier). `once` rides on the first report of the worker group."""

    def __init__(self, model, optimizer, scaler, spec: JobSpec, meta_base: dict, once: dict):
        self.model, self.optimizer, self.scaler, self.spec = model, optimizer, scaler, spec
        self.meta_base = meta_base
        self.once = once

    def report(self, metrics: dict, *, epoch: int, step: int, progress: EpochProgress | None = None, score=None):
        """An end-of-epoch checkpoint, or with `progress` a step checkpoint within `epoch`;
        `score` ({metric: value}) goes to Ray's retention only, not into meta.json."""
        metrics = {**metrics, **self.once}
        self.once = {}
        if not dist.is_main():
            ray.train.report({**metrics, **(score or {})}, checkpoint=None)
            return
        train_state = {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "step": step,
            "seed": self.spec.training.seed,
            "progress": asdict(progress) if progress else None,
        }
        meta = dict(self.meta_base, epoch=epoch, step=progress.batches if progress else None, metrics=metrics)
        name = checkpoint_name(epoch, progress.batches if progress else None)
        with tempfile.TemporaryDirectory(prefix="orch-ckpt-") as tmp:
            save_checkpoint(tmp, self.model.state_dict(), train_state, meta)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report({**metrics, **(score or {})}, checkpoint=checkpoint, checkpoint_dir_name=name)

    def report_step(self, epoch: int, step: int, progress: EpochProgress, stopped_by: str) -> None:
        """A step checkpoint. Its report is not an epoch's (the controller logs no metrics for
        it), and Ray's retention ranks it below every epoch checkpoint (it was not validated)."""
        rule = BestRule.of(self.spec.checkpoint)
        metrics = self._step_metrics(epoch, progress.batches, stopped_by)
        self.report(metrics, epoch=epoch, step=step, progress=progress, score={rule.metric: rule.never_best()})

    def report_stop(self, epoch: int, batch: int, stopped_by: str) -> None:
        """A stop with nothing new to save: a report without a checkpoint, so the driver learns why."""
        ray.train.report({**self._step_metrics(epoch, batch, stopped_by), **self.once}, checkpoint=None)
        self.once = {}

    @staticmethod
    def _step_metrics(epoch: int, batch: int, stopped_by: str) -> dict:
        return {"report": "step", "epoch": epoch, "batches": batch, "stopped_by": stopped_by}
