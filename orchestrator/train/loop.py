"""The Ray Train worker loop: `train_worker(config)` runs on every rank.

Per epoch: train on this rank's shard, evaluate every validation sample once across ranks,
rank 0 writes a checkpoint, and every rank calls `ray.train.report` (a barrier). MLflow
logging happens on the Ray Train controller (orchestrator.tracking), once per report.
"""

import logging
import random
import socket
import tempfile
import time

import numpy as np
import ray.train
import torch
from torch.nn.parallel import DistributedDataParallel

from data_pipeline import ResolutionSchedule, build_train_loader, build_val_loader, read_dataset_info
from data_pipeline.geometry import eval_style
from orchestrator import telemetry
from orchestrator.models import build_model
from orchestrator.spec.schema import JobSpec
from orchestrator.train import distributed as dist
from orchestrator.train import faults
from orchestrator.train.checkpoint import (
    DamagedCheckpoint,
    epoch_of,
    latest_good,
    load_model_state,
    load_train_state,
    save_checkpoint,
    verify,
)
from orchestrator.train.optim import build_optimizer
from orchestrator.train.schedule import lr_at, scaled_lr
from orchestrator.train.steps import StepContext, configure_backends, evaluate, train_one_epoch

logger = logging.getLogger(__name__)


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

    start_epoch, restored = _restore(config, model, optimizer, scaler)
    placement = worker_placement()
    wrapped = _wrap(model, device, spec.training.compile)
    steps_per_epoch = len(train_loader)
    ctx = StepContext(
        device=device,
        precision=precision,
        label_smoothing=spec.optimizer.label_smoothing,
        lr_for_step=lambda step: lr_at(step, steps_per_epoch, base_lr, spec.schedule, spec.training.epochs),
        before_step=faults.step_hook(config.get("fault"), dist.rank(), steps_per_epoch, fresh=not restored),
    )
    meta_base = {
        "arch": spec.model.arch,
        "num_classes": num_classes,
        "classes": info.classes,
        "spec": config["spec"],
        "preprocess": preprocess_info(spec, info),
    }
    local_rank = ray.train.get_context().get_local_rank()
    with telemetry.node_monitor(config.get("telemetry"), local_rank, placement["worker_node_id"]):
        for epoch in range(start_epoch, spec.training.epochs):
            seed_everything(spec.training.seed, epoch, dist.rank())
            train_loader.set_epoch(epoch)
            started = time.perf_counter()
            metrics = train_one_epoch(wrapped, train_loader, optimizer, scaler, ctx, epoch * steps_per_epoch)
            metrics.update(evaluate(wrapped, val_loader, ctx))
            metrics.update(
                epoch=epoch, epoch_seconds=time.perf_counter() - started, train_resolution=train_loader.resolution
            )
            if restored:  # told once, with the first epoch after a restore, for the run's record
                metrics.update(restored)
                restored = {}
            metrics.update(placement)  # where this worker group runs: the controller tags the run with it
            placement = {}
            _report(model, optimizer, scaler, epoch, (epoch + 1) * steps_per_epoch, spec, metrics, meta_base)


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
    workers = data.num_workers or max(1, int(spec.scaling.cpus_per_worker))
    if spec.training.deterministic:
        workers = 1  # FFCV's augmentations draw per thread; one loader thread draws the same each run
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
    val = build_val_loader(data.val, resolution=res.val_res, rank=dist.rank(), world_size=dist.world_size(), **common)
    return train, val


def _restore(config: dict, model, optimizer, scaler) -> tuple[int, dict]:
    """Load the latest good checkpoint: Ray's after a worker failure, else the one to resume from.

    Returns the next epoch and, when something was restored, {"restored_from": location} plus
    "restore_warning" when the latest checkpoint was damaged and an earlier one was used.
    """
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        location, fs = checkpoint.path, checkpoint.filesystem
    elif config.get("resume_from"):
        location, fs = config["resume_from"], None
    else:
        return 0, {}
    location, warning = good_checkpoint(location, fs)
    with ray.train.Checkpoint(location, filesystem=fs).as_directory() as path:
        epoch = _load_into(path, model, optimizer, scaler)
    restored = {"restored_from": location}
    if warning:
        restored["restore_warning"] = warning
    return epoch, restored


def good_checkpoint(location: str, fs=None) -> tuple[str, str | None]:
    """`location` if it verifies, else the newest earlier checkpoint beside it that does (with a
    warning). Never silently starts from scratch: no good checkpoint at all is an error."""
    try:
        verify(location, fs)
        return location, None
    except DamagedCheckpoint as exc:
        problem = str(exc)
    parent = location.rstrip("/").rsplit("/", 1)[0]
    epoch = epoch_of(location)
    fallback, _ = latest_good(parent, fs, below=epoch) if epoch is not None else (None, [])
    if fallback is None:
        raise RuntimeError(f"checkpoint {location} is damaged ({problem}) and no earlier checkpoint verifies")
    warning = f"checkpoint {location} is damaged ({problem}); continuing from {fallback}"
    logger.warning(warning)
    return fallback, warning


def _load_into(path, model, optimizer, scaler) -> int:
    model.load_state_dict(load_model_state(path))
    state = load_train_state(path)
    optimizer.load_state_dict(state["optimizer"])
    if scaler.is_enabled() and state["scaler"]:
        # An fp16 run's loss scale carries on; one saved without a scaler (bf16, fp32) leaves a
        # fresh fp16 scaler to start its own, and bf16/fp32 ignore a saved one: precision may
        # change on resume (or differ on the CPU a GPU run resumes on).
        scaler.load_state_dict(state["scaler"])
    return int(state["epoch"]) + 1


def _wrap(model, device: torch.device, compile_model: bool):
    if dist.world_size() > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model) if compile_model else model


def _report(model, optimizer, scaler, epoch, step, spec, metrics, meta_base) -> None:
    dir_name = f"epoch_{epoch:04d}"
    if not dist.is_main():
        ray.train.report(metrics, checkpoint=None)
        return
    train_state = {
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "step": step,
        "seed": spec.training.seed,
    }
    meta = dict(meta_base, epoch=epoch, metrics=metrics)
    with tempfile.TemporaryDirectory(prefix="orch-ckpt-") as tmp:
        save_checkpoint(tmp, model.state_dict(), train_state, meta)
        checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=dir_name)
