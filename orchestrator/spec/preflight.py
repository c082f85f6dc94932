"""Checks that run before a job starts anything: every problem found here is one line, and
no Ray job or MLflow run exists yet to be left behind."""

import os

import click
import torch

from data_pipeline import num_samples, read_dataset_info, val_shard
from data_pipeline.geometry import eval_style, paper_scale_bounds, val_resize_side
from orchestrator.errors import SpecError
from orchestrator.models import build_model
from orchestrator.spec.schema import JobSpec
from orchestrator.train.precision import choose_precision
from orchestrator.train.schedule import describe_lr, scaled_lr


def check_model(spec: JobSpec, num_classes: int) -> None:
    """Build the model on the meta device: validates arch and options without allocating."""
    with torch.device("meta"):
        build_model(spec.model.arch, num_classes, **spec.model.options)


def plan(spec: JobSpec, require_data: bool = True) -> dict:
    """What follows from the spec, read from the data files and checked.

    With require_data=False (a dry run before the data is written) a missing dataset is
    reported in the plan instead of raised; any other problem is still an error.
    """
    if not require_data and not (os.path.exists(spec.data.train) and os.path.exists(spec.data.val)):
        return _plan_without_data(spec)
    # The files the spec names come first: a missing or foreign .beton is named before
    # anything about the dataset.json beside it.
    n_train = num_samples(spec.data.train)
    n_val = num_samples(spec.data.val)
    info = read_dataset_info(spec.data.train)
    num_classes = spec.model.num_classes or info.num_classes
    if num_classes < info.num_classes:
        raise SpecError(f"model.num_classes: {num_classes} is fewer than the dataset's {info.num_classes} classes")
    check_model(spec, num_classes)
    if spec.data.max_train_samples:
        n_train = min(n_train, spec.data.max_train_samples)
    if spec.data.max_val_samples:
        n_val = min(n_val, spec.data.max_val_samples)
    workers = spec.scaling.num_workers
    global_batch = spec.training.batch_size * workers
    steps = n_train // workers // spec.training.batch_size
    if steps == 0:
        raise SpecError(
            f"training.batch_size: {spec.training.batch_size} per worker x {workers} workers "
            f"exceeds the {n_train} training samples; lower it"
        )
    shards = [val_shard(n_val, r, workers) for r in range(workers)]
    return {
        "num_classes": num_classes,
        "train_samples": n_train,
        "val_samples": n_val,
        "global_batch": global_batch,
        "effective_lr": scaled_lr(spec.optimizer.lr, global_batch),
        "lr_schedule": lr_schedule(spec, global_batch, steps),
        "steps_per_epoch": steps,
        "total_steps": steps * spec.training.epochs,
        "workers": workers,
        "worker_resources": _resources_text(spec),
        "precision": _precision_text(spec),
        "val_shard_sizes": [stop - start for start, stop in shards],
        "preemption": _preemption_text(spec),
        "mean": list(info.mean),
        "std": list(info.std),
        "warnings": resolution_warnings(spec, info) + placement_warnings(spec),
    }


def _precision_text(spec: JobSpec) -> str:
    """What training.precision trains in: on GPUs as said, on CPUs as this machine's CPU decides
    (a cluster's worker decides on its own CPU and records it as the run's orch.precision tag)."""
    if spec.scaling.use_gpu:
        return str(choose_precision(spec.training.precision, "cuda"))
    return f"{choose_precision(spec.training.precision, 'cpu')}, on this machine's CPU"


def tell_warnings(checked: dict) -> None:
    """Print a plan's warnings on stderr, one line each, before the job starts."""
    for warning in checked.get("warnings", []):
        click.echo(f"orch: warning: {warning}", err=True)


def resolution_warnings(spec: JobSpec, info) -> list[str]:
    """Where the stored images are smaller than what the spec resizes them to (they would be
    upsampled: the numbers come out worse and nothing fails). Needs the stored sizes that
    `orch data prepare imagefolder` records in dataset.json."""
    if eval_style(spec.data.augment) != "imagenet" or not info.short_side:
        return []
    res = spec.data.resolution
    needs = {"val": ("validation resizes to", val_resize_side(res.val_res))}
    if spec.data.augment == "paper":
        # The paper itself upsamples toward 480 (ImageNet's typical shorter side is 375); only a
        # stored side below the smallest draw means every training view is upsampled.
        smallest_draw, _ = paper_scale_bounds(spec.data.paper.short_side_min, spec.data.paper.short_side_max)
        needs["train"] = ("augment paper resizes to at least", round(smallest_draw * res.max_res))
    warnings = []
    for split, (what, side) in needs.items():
        stored = (info.short_side.get(split) or {}).get("median")
        if stored is not None and stored < side:
            warnings.append(
                f"data.{split}: the stored images' median shorter side is {stored:g} pixels, but {what} {side}: "
                "they will be upsampled; write the data again with a larger --max-resolution "
                "(`orch data prepare imagefolder`, default 500)"
            )
    return warnings


def _plan_without_data(spec: JobSpec) -> dict:
    check_model(spec, spec.model.num_classes or 10)
    global_batch = spec.training.batch_size * spec.scaling.num_workers
    return {
        "data": f"not written yet: {spec.data.train} / {spec.data.val} (see `orch data prepare`)",
        "global_batch": global_batch,
        "effective_lr": scaled_lr(spec.optimizer.lr, global_batch),
        "lr_schedule": lr_schedule(spec, global_batch),
        "workers": spec.scaling.num_workers,
        "worker_resources": _resources_text(spec),
        "precision": _precision_text(spec),
        "preemption": _preemption_text(spec),
        "warnings": placement_warnings(spec),
    }


def placement_warnings(spec: JobSpec) -> list[str]:
    """SPREAD for GPU workers: what it costs (DDP's gradient all_reduce every step crosses nodes)."""
    s = spec.scaling
    if not s.use_gpu or s.num_workers < 2 or "SPREAD" not in s.placement:
        return []
    return [
        f"scaling.placement: {s.placement} puts the {s.num_workers} GPU workers on as many nodes as it can, so "
        "every step's gradient all_reduce crosses the network instead of NVLink within a node (several times "
        "slower per byte); PACK, the default, fills a node's GPUs first"
    ]


def _preemption_text(spec: JobSpec) -> str:
    t = spec.training
    budget = "any number of" if t.max_preemption_failures == -1 else f"at most {t.max_preemption_failures}"
    return (
        f"notices checked every {t.notice_every_n_steps} steps (a drain's is answered within Ray's 5 s poll + "
        f"{t.notice_every_n_steps} steps + one checkpoint upload); a SIGTERM'd worker or a stopped Kubernetes "
        f"pod has {t.termination_grace_s} s; {budget} preemptions, apart from max_failures={t.max_failures}"
    )


def lr_schedule(spec: JobSpec, global_batch: int, steps_per_epoch: int | None = None) -> str:
    """The learning rate's course at this global batch (train/schedule.describe_lr)."""
    lr = scaled_lr(spec.optimizer.lr, global_batch)
    return describe_lr(spec.schedule, lr, spec.training.epochs, steps_per_epoch)


def _resources_text(spec: JobSpec) -> str:
    s = spec.scaling
    text = f"{s.cpus_per_worker:g} CPU"
    if s.use_gpu:
        text += f", {s.gpus_per_worker:g} GPU"
    return f"{text} each, placement {s.placement}"


def check_multi_node(spec: JobSpec, uri: str, nodes: int) -> None:
    """On a cluster of several nodes the Ray Train controller and the workers may run on any of
    them: MLflow and the checkpoints must be where every node reaches, not on one node's disk."""
    if nodes < 2:
        return
    if is_local_store(uri):
        raise SpecError(
            f"tracking.tracking_uri: {uri} is a file on one machine, but the Ray cluster has {nodes} nodes "
            "that log to MLflow from wherever they run; start `mlflow server --host 0.0.0.0 ...` and give "
            "its http:// URL, which every node can reach (tracking.tracking_uri or $MLFLOW_TRACKING_URI)"
        )
    storage = spec.checkpoint.storage
    if not spec.checkpoint.shared and ("://" not in storage or storage.startswith("file://")):
        raise SpecError(
            f"checkpoint.storage: {storage} is a path on one node's disk, but the Ray cluster has {nodes} "
            "nodes that each write and read checkpoints; use a URI every node reaches (s3://..., gs://...) "
            "or, on a filesystem every node mounts (NFS, a PVC), set checkpoint.shared=true"
        )


def is_local_store(uri: str) -> bool:
    """An MLflow store that is a file on the machine that opens it (sqlite, a folder)."""
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri
