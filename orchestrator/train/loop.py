"""The Ray Train worker loop: `train_worker(config)` runs on every rank.

Per epoch: train on this rank's shard, evaluate every validation sample once across ranks,
rank 0 writes a checkpoint, and every rank calls `ray.train.report` (a barrier). MLflow
logging happens on the Ray Train controller (orchestrator.train.epoch_logger), once per epoch.

Every training.notice_every_n_steps steps, every rank checks for notices (train/notices.py): a
preemption (Ray's drain notice, or a SIGTERM to a worker) writes a step checkpoint
(epoch_NNNN_step_SSSSSS, holding the epoch's progress) once and training goes on until Ray
restarts the worker group from it; `orch stop --save` writes one and ends training. Every
checkpoint.every_n_steps steps a step checkpoint is written too. A run restored from one
continues that epoch after its last trained batch, with the same data order, augmentation draws
and schedule, when it runs with the world size, batch and seed that wrote it; else that epoch
starts again.
"""

import contextlib
import functools
import logging
import random
import socket
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np
import psutil
import ray.train
import torch
from torch.nn.parallel import DistributedDataParallel

from data_pipeline import ResolutionSchedule, build_train_loader, build_val_loader, read_dataset_info
from data_pipeline.geometry import eval_style
from orchestrator import ray_internals, startup_trace
from orchestrator.models import build_model
from orchestrator.recovery.best import BestRule
from orchestrator.runs import telemetry
from orchestrator.spec.schema import JobSpec
from orchestrator.tags import PRECISION_TAG, STEPS_TAG
from orchestrator.train import distributed as dist
from orchestrator.train import faults
from orchestrator.train.checkpoint import (
    checkpoint_name,
    data_layout,
    layout_mismatch,
    load_meta,
    load_model_state,
    load_train_state,
    save_checkpoint,
)
from orchestrator.train.notices import NONE, PREEMPTED, REASONS, STOP, Notice, NoticeCheck, signalled
from orchestrator.train.optim import build_optimizer
from orchestrator.train.precision import choose_precision
from orchestrator.train.schedule import lr_at, scaled_lr
from orchestrator.train.step_metrics import StepLogger, every_n_steps
from orchestrator.train.steps import EpochProgress, StepContext, configure_backends, evaluate, train_one_epoch

logger = logging.getLogger(__name__)


@dataclass
class Start:
    """Where a worker group starts: the epoch to train, and how far into it (a step checkpoint's)."""

    epoch: int = 0
    progress: EpochProgress | None = None


@dataclass
class Preemption:
    """The preemption this worker group answered (its step checkpoint is registered with Ray),
    if any: the group then trains on until Ray restarts it."""

    notice: Notice | None = None
    where: str = ""

    def answer(self, notice: Notice, where: str) -> None:
        """Its checkpoint registered: train on, unless this worker was told to go by SIGTERM (it
        lets Ray restart the group now, and makes no more progress; nor can its peers)."""
        self.notice, self.where = notice, where
        logger.warning("rank %d: preemption notice %s answered at %s", dist.rank(), notice.preemption, where)
        if signalled():
            ray_internals.announce_preemption(time.time())
            _wait_for_restart()


def train_worker(config: dict) -> None:
    trace = config.get("trace")
    startup_trace.mark("worker: process created", trace, at=psutil.Process().create_time())
    startup_trace.mark("worker: imports done", trace)
    spec = JobSpec.model_validate(config["spec"])
    device = _device(spec)
    configure_backends(device, spec.training.deterministic)  # cuDNN autotuning and TF32, unless deterministic
    info = read_dataset_info(spec.data.train)
    num_classes = spec.model.num_classes or info.num_classes
    train_loader, val_loader = _loaders(spec, info, device)
    startup_trace.mark("worker: loaders built", trace)

    torch.manual_seed(spec.training.seed)  # the initial weights follow training.seed
    model = build_model(spec.model.arch, num_classes, **spec.model.options)
    memory_format = torch.channels_last if spec.training.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    base_lr = scaled_lr(spec.optimizer.lr, spec.training.batch_size * dist.world_size())
    optimizer = build_optimizer(model, spec.optimizer, base_lr)
    chosen = choose_precision(spec.training.precision, device.type)
    precision = chosen.value
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    layout = data_layout(spec, dist.world_size())
    start, restored = _restore(config, model, optimizer, scaler, layout)
    wrapped = _wrap(model, device, spec.training.compile)
    startup_trace.mark("worker: model built", trace)
    steps_per_epoch = len(train_loader)
    ctx = StepContext(
        device=device,
        precision=precision,
        label_smoothing=spec.optimizer.label_smoothing,
        lr_for_step=lambda step: lr_at(step, steps_per_epoch, base_lr, spec.schedule, spec.training.epochs),
        before_step=_before_step(config, steps_per_epoch, fresh=not restored),
    )
    run = config.get("run") or {}
    step_logger = StepLogger(
        run.get("tracking_uri"),
        run.get("run_id"),
        every=every_n_steps(steps_per_epoch, spec.tracking.log_every_n_steps),
        world_size=dist.world_size(),
        active=dist.is_main(),
    )
    step_logger.tag(PRECISION_TAG, str(chosen))  # before the steps' tag, which readers wait for
    step_logger.tag(STEPS_TAG, str(steps_per_epoch))
    ctx.after_step = step_logger
    meta_base = {
        "arch": spec.model.arch,
        "num_classes": num_classes,
        "classes": info.classes,
        "spec": config["spec"],
        "preprocess": preprocess_info(spec, info),
        "layout": layout,  # what a step checkpoint's progress assumes (train/checkpoint.py)
    }
    # Told once, with the first report: where this worker group runs (the controller tags the
    # run with every rank's), and what it was restored from.
    reporter = Reporter(model, optimizer, scaler, spec, meta_base, once={**restored, **worker_placement()})
    reporter.step_upload = faults.slow_upload(config.get("fault"))  # None but in tests
    notices = NoticeCheck(run.get("run_id"), spec.training.notice_every_n_steps)
    preemption = Preemption()
    local_rank = ray.train.get_context().get_local_rank()
    with (
        telemetry.node_monitor(config.get("telemetry"), local_rank, reporter.once["worker_node_id"]),
        step_logger,
    ):
        for epoch in range(start.epoch, spec.training.epochs):
            progress = start.progress if epoch == start.epoch else None
            seed_everything(spec.training.seed, epoch, dist.rank())
            train_loader.set_epoch(epoch, skip_batches=progress.batches if progress else 0)
            began = time.perf_counter()
            at_step = between_steps(spec, epoch, steps_per_epoch, notices, reporter, progress, preemption)
            first_step = epoch * steps_per_epoch
            with _until_restart(preemption):
                metrics = train_one_epoch(wrapped, train_loader, optimizer, scaler, ctx, first_step, progress, at_step)
                if metrics is None:
                    return  # stopped by `orch stop --save`: its checkpoint is written
                metrics.update(evaluate(wrapped, val_loader(), ctx))
                metrics.update(
                    epoch=epoch, epoch_seconds=time.perf_counter() - began, train_resolution=train_loader.resolution
                )
                reporter.report(metrics, epoch=epoch, step=(epoch + 1) * steps_per_epoch)


def between_steps(spec: JobSpec, epoch: int, steps_per_epoch: int, notices: NoticeCheck, reporter, start, preemption):
    """train_one_epoch's at_step for `epoch`, called before each batch on every rank. When the
    notices are due, every rank checks them; a notice (a preemption not yet answered, or a stop),
    or checkpoint.every_n_steps coming due, writes a step checkpoint (none when nothing was
    trained since the last one). After a notice every rank waits until Ray has registered the
    checkpoint; then a stop ends training and a preemption is answered: training goes on until
    Ray restarts the worker group at the drain's deadline, or at once when a worker got SIGTERM
    (it lets Ray restart and makes no more progress, nor can its peers)."""
    every = spec.checkpoint.every_n_steps
    saved = {"batch": start.batches if start else 0}  # what the checkpoint restored from, or the last epoch's, covers

    def at_step(batch: int, progress) -> bool:
        step = epoch * steps_per_epoch + batch
        notice = notices.check() if notices.due(step) else Notice(NONE)
        if notice.reason == PREEMPTED and preemption.notice is not None:
            notice = Notice(NONE)  # answered once: its checkpoint is registered
        due = every is not None and step % every == 0
        if notice.reason == NONE and not due:
            return False
        if batch > saved["batch"]:
            reporter.report_step(epoch, step, progress(), REASONS.get(notice.reason, ""))
            saved["batch"] = batch
        elif notice.reason == STOP:  # nothing new to save: the last checkpoint is where a resume continues
            reporter.report_stop(epoch, batch, REASONS[STOP])
        if notice.reason == NONE:
            return False
        reporter.wait_until_registered()  # no rank moves on before Ray holds the checkpoint
        if notice.reason == PREEMPTED:
            preemption.answer(notice, f"epoch {epoch}, after {batch} of its {steps_per_epoch} batches")
        return notice.reason == STOP

    return at_step


@contextlib.contextmanager
def _until_restart(preemption: Preemption):
    """After a preemption was answered, a rank whose peers went with their node (a collective
    failing) waits for Ray to restart the worker group rather than raise: Ray would charge an
    error raised before the preempted workers' deaths are seen to training.max_failures."""
    try:
        yield
    except Exception:
        if preemption.notice is None:
            raise
        logger.warning(
            "rank %d: a collective failed after the preemption answered at %s; waiting for Ray Train's restart",
            dist.rank(),
            preemption.where,
            exc_info=True,
        )
        _wait_for_restart()


def _wait_for_restart() -> None:
    """Make no more progress: Ray Train ends this worker group at the preemption's deadline."""
    while True:
        time.sleep(1)


def _before_step(config: dict, steps_per_epoch: int, fresh: bool):
    """The step hook with a batch in hand: the tests' fault hook (train/faults.py) and, while
    bench/startup.py traces, the first batch's mark; None when there is neither."""
    fault = faults.step_hook(config.get("fault"), dist.rank(), steps_per_epoch, fresh=fresh)
    trace = config.get("trace")
    if trace is None:
        return fault
    first = [True]

    def before_step(step: int) -> None:
        if first:
            first.clear()
            startup_trace.mark("worker: first batch", trace)
        if fault is not None:
            fault(step)

    return before_step


def worker_placement() -> dict:
    """This worker's rank, host and Ray node, reported once per worker group (the controller
    sees every rank's report, so no collective is needed to gather them)."""
    return {
        "worker_rank": dist.rank(),
        "worker_hostname": socket.gethostname(),
        "worker_node_id": ray.get_runtime_context().get_node_id(),
    }


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
    val = functools.cache(
        lambda: build_val_loader(data.val, resolution=res.val_res, max_samples=data.max_val_samples, **shard, **common)
    )
    return train, val


def _restore(config: dict, model, optimizer, scaler, layout: dict) -> tuple[Start, dict]:
    """Load the checkpoint this worker group continues from: the one Ray hands over after a
    failure or preemption, else the one `orch resume` chose; either was verified once when it
    was chosen (orchestrator/recovery/restart.py, on the controller or the resuming driver). Returns
    where training starts and, when something was restored, {"restored_from": location}. A step
    checkpoint written by another layout (a resume changed it; the resuming driver says so on
    the run) starts its epoch again."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        location, fs = checkpoint.path, checkpoint.filesystem
    elif config.get("resume_from"):
        location, fs = config["resume_from"], None
    else:
        return Start(), {}
    with ray.train.Checkpoint(location, filesystem=fs).as_directory() as path:
        start = _load_into(path, model, optimizer, scaler)
        mismatch = layout_mismatch(load_meta(path), layout) if start.progress else None
    if mismatch:  # its trained batches were another layout's: skipping them would skip other samples
        logger.warning("%s: %s; epoch %d starts again from its first batch", location, mismatch, start.epoch)
        start = Start(start.epoch)
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

    step_upload = None  # the tests' slow upload of step checkpoints (train/faults.py)

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
            upload = self.step_upload if progress else None
            ray.train.report(
                {**metrics, **(score or {})},
                checkpoint=checkpoint,
                checkpoint_dir_name=name,
                checkpoint_upload_fn=upload,
            )

    def report_step(self, epoch: int, step: int, progress: EpochProgress, stopped_by: str) -> None:
        """A step checkpoint. Its report is not an epoch's (the controller logs no metrics for
        it), and Ray's retention ranks it below every epoch checkpoint (it was not validated)."""
        rule = BestRule.of(self.spec.checkpoint)
        metrics = self._step_metrics(epoch, progress.batches, stopped_by)
        self.report(metrics, epoch=epoch, step=step, progress=progress, score={rule.metric: rule.never_best()})

    @staticmethod
    def wait_until_registered() -> None:
        """Until Ray Train's controller has registered every report this rank made (rank 0's
        checkpoint written, checksummed, uploaded and recorded): called on every rank."""
        ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)

    def report_stop(self, epoch: int, batch: int, stopped_by: str) -> None:
        """A stop with nothing new to save: a report without a checkpoint, so the driver learns why."""
        ray.train.report({**self._step_metrics(epoch, batch, stopped_by), **self.once}, checkpoint=None)
        self.once = {}

    @staticmethod
    def _step_metrics(epoch: int, batch: int, stopped_by: str) -> dict:
        return {"report": "step", "epoch": epoch, "batches": batch, "stopped_by": stopped_by}
