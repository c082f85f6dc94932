"""What a researcher sees of a run in the MLflow dashboard besides its metrics and params: the
training and validation data as the run's dataset inputs, a description of what ran (the run's
note, `mlflow.note.content`, which the UI renders as Markdown) with the result appended at the
end, and a finished run's best checkpoint as a logged model (orchestrator/runs/model_logging.py).

targets.local.drive records it, where the data is read: on this machine for a local run, in
the job's entrypoint on the cluster for `--address` and Kubernetes runs (it runs drive too).
`begin` comes before training, `finish` after the run ended. Neither fails a run: what could
not be recorded is named in the tag orch.record_warning (orch.model_warning for the model).
A resumed run records again: the same files add no dataset inputs, the note is written anew.
"""

import contextlib
import datetime
import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
import torch
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_RUN_NOTE

from data_pipeline import num_samples, read_dataset_info
from data_pipeline.info import DatasetInfo
from orchestrator.models import arch_info, build_model, count_parameters
from orchestrator.recovery.best import BestRule
from orchestrator.runs import model_logging, tracking
from orchestrator.spec.schema import JobSpec
from orchestrator.tags import (
    DRIVER_HOST_TAG,
    EPOCH_TAG,
    FAILURES_TAG,
    K8S_NAMESPACE_TAG,
    LAST_FAILURE_TAG,
    MODEL_WARNING_TAG,
    PREEMPTION_LOG_TAG,
    RAY_ADDRESS_TAG,
    RAYJOB_TAG,
    RECORD_WARNING_TAG,
    TARGET_TAG,
)
from orchestrator.train.precision import choose_precision
from orchestrator.train.schedule import describe_lr, scaled_lr

RESULT_HEADING = "#### Result"
_DIGEST_BYTES = 1 << 20  # the start of a .beton: FFCV's header, field descriptors and metadata table


@dataclass(frozen=True)
class DataSplit:
    """One .beton a run reads, as its dataset input shows it."""

    context: str  # MLflow's mlflow.data.context: "training" or "validation"
    key: str  # "train" or "val": dataset.json's name for the split
    path: str
    samples: int  # in the file
    used: int  # what the run reads of them (data.max_train_samples, data.max_val_samples)
    info: DatasetInfo  # the dataset.json beside data.train, which the run reads for both


def begin(spec: JobSpec, uri: str, run_id: str) -> None:
    """Before training: the data as the run's dataset inputs, and the run's description."""
    with _warn_on_failure(uri, run_id, RECORD_WARNING_TAG, "datasets and description"):
        client = MlflowClient(uri)
        splits = data_splits(spec)
        client.log_inputs(run_id, datasets=[dataset_input(split) for split in splits])
        client.set_tag(run_id, MLFLOW_RUN_NOTE, describe(spec, splits, client.get_run(run_id).data.tags))


def finish(spec: JobSpec, uri: str, run_id: str, status: str, best_checkpoint: str | None) -> None:
    """After the run ended with `status`: its result appended to the description and, when it
    FINISHED, its best checkpoint logged as the run's model (tracking.log_model), registered
    under tracking.register_model when that is set."""
    with _warn_on_failure(uri, run_id, RECORD_WARNING_TAG, "the result"):
        append_result(uri, run_id, BestRule.of(spec.checkpoint))
    if status != "FINISHED" or not spec.tracking.log_model:
        return
    with _warn_on_failure(uri, run_id, MODEL_WARNING_TAG, "the model"):
        if not best_checkpoint:
            raise FileNotFoundError("the run has no epoch checkpoint with its metrics")
        model_logging.log_checkpoint(uri, run_id, best_checkpoint, register_as=spec.tracking.register_model)


@contextlib.contextmanager
def _warn_on_failure(uri: str, run_id: str, tag: str, what: str):
    """Whatever goes wrong inside is recorded in the run's `tag` instead of failing the run."""
    try:
        yield
    except Exception as exc:  # a dashboard extra must never fail a trained run
        with contextlib.suppress(Exception):
            MlflowClient(uri).set_tag(run_id, tag, f"could not record {what}: {type(exc).__name__}: {exc}"[:5000])


def data_splits(spec: JobSpec) -> list[DataSplit]:
    """The training and validation files of the spec, counted from their headers."""
    info = read_dataset_info(spec.data.train)
    train, val = num_samples(spec.data.train), num_samples(spec.data.val)
    used = min(train, spec.data.max_train_samples or train)
    val_used = min(val, spec.data.max_val_samples or val)
    return [
        DataSplit("training", "train", spec.data.train, train, used, info),
        DataSplit("validation", "val", spec.data.val, val, val_used, info),
    ]


def dataset_input(split: DataSplit) -> DatasetInput:
    """The split as MLflow's dataset input: name, digest, source (the file), schema, profile."""
    dataset = Dataset(
        name=f"{split.info.name}-{split.key}",
        digest=file_digest(split.path),
        source_type="local",
        source=json.dumps({"uri": split.path}),
        schema=json.dumps(_schema(split.info)),
        profile=json.dumps(_profile(split)),
    )
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, split.context)])


def file_digest(path: str) -> str:
    """16 hex digits of sha256 over the file's path, size, modification time and first MiB (its
    header and tables): a rewritten or moved file gets a new digest; nothing else is read.
    MLflow keeps one dataset per name and digest in an experiment, so the path is part of it:
    a file elsewhere keeps its own source."""
    stat = os.stat(path)
    digest = hashlib.sha256(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    with open(path, "rb") as f:
        digest.update(f.read(_DIGEST_BYTES))
    return digest.hexdigest()[:16]


def _profile(split: DataSplit) -> dict:
    """What the UI shows of the split's contents: samples (and those used), classes, image size."""
    profile = {
        "num_samples": split.samples,
        "num_classes": split.info.num_classes,
        "image_size": split.info.image_size,
        "dataset": split.info.name,
        "size_bytes": os.path.getsize(split.path),
    }
    if split.used != split.samples:
        profile["samples_used"] = split.used  # data.max_train_samples, data.max_val_samples
    if split.info.short_side and split.info.short_side.get(split.key):
        profile["short_side"] = split.info.short_side[split.key]  # stored shorter sides: min, median, max
    return profile


def _schema(info: DatasetInfo) -> dict:
    """What a sample holds: an RGB image (uint8, H x W x 3; -1 where sizes vary) and its label,
    as mlflow.data.schema.TensorDatasetSchema writes it (importing mlflow.data takes a second)."""
    side = info.image_size or -1
    images = TensorSpec(np.dtype(np.uint8), (-1, side, side, 3), "image")
    labels = TensorSpec(np.dtype(np.int64), (-1,), "label")
    return {"mlflow_tensorspec": {"features": Schema([images]).to_json(), "targets": Schema([labels]).to_json()}}


def describe(spec: JobSpec, splits: list[DataSplit], tags: dict) -> str:
    """The run's note: what ran, in a heading and three lines (data, recipe, where)."""
    return "\n".join(
        [
            f"### {model_title(spec, splits[0].info.num_classes)}",
            f"- **Data**: {_data_line(splits)}",
            f"- **Recipe**: {_recipe_line(spec)}",
            f"- **Where**: {_where_line(spec, tags)}",
        ]
    )


def model_title(spec: JobSpec, data_classes: int) -> str:
    """'ResNet-50 (shortcut B): `resnet50`, 25.56M parameters, 1000 classes'."""
    arch = arch_info(spec.model.arch)
    name = f"{'ResNet' if arch.residual else 'Plain'}-{arch.depth}"
    if arch.family == "cifar":
        name = f"CIFAR {name}"
    if arch.residual:
        name += f" (shortcut {spec.model.options.get('shortcut', arch.default_shortcut)})"
    classes = spec.model.num_classes or data_classes
    with torch.device("meta"):
        params = count_parameters(build_model(spec.model.arch, classes, **spec.model.options))
    return f"{name}: `{spec.model.arch}`, {params / 1e6:.2f}M parameters, {classes} classes"


def _data_line(splits: list[DataSplit]) -> str:
    """The dataset, its classes and image size, each file with its samples."""
    info = splits[0].info
    size = f"{info.image_size}x{info.image_size} images" if info.image_size else "images of varying size"
    files = []
    for split in splits:
        count = f"{split.used:,} of {split.samples:,}" if split.used != split.samples else f"{split.samples:,}"
        files.append(f"{split.context} `{split.path}` ({count} samples)")
    return f"{info.name}, {info.num_classes} classes, {size}; " + ", ".join(files)


def _recipe_line(spec: JobSpec) -> str:
    """Epochs, batch, learning rate and schedule, optimizer, augmentation, precision."""
    t, o, s = spec.training, spec.optimizer, spec.scaling
    batch = t.batch_size * s.num_workers
    precision = choose_precision(t.precision, "cuda" if s.use_gpu else "cpu")
    return (
        f"{t.epochs} epochs, batch {t.batch_size} per worker x {_count(s.num_workers, 'worker')} = {batch}, "
        f"lr {o.lr:g} per 256 images ({scaled_lr(o.lr, batch):.4g} at this batch), {_schedule_text(spec)}, "
        f"SGD momentum {o.momentum:g}{' (Nesterov)' if o.nesterov else ''}, weight decay {o.weight_decay:g}, "
        f"augment {spec.data.augment}, {precision}"
    )


def _schedule_text(spec: JobSpec) -> str:
    """The learning rate's course (train/schedule.describe_lr): 'lr 0.1, x0.1 at epochs 30, 60 and 90'."""
    batch = spec.training.batch_size * spec.scaling.num_workers
    return describe_lr(spec.schedule, scaled_lr(spec.optimizer.lr, batch), spec.training.epochs)


def _where_line(spec: JobSpec, tags: dict) -> str:
    """Workers and what each has, and where they ran (the run's orch.target and its tags)."""
    s = spec.scaling
    each = f"{s.gpus_per_worker:g} GPU" if s.use_gpu else f"{s.cpus_per_worker:g} CPU"
    workers = f"{_count(s.num_workers, 'worker')} x {each}"
    target = tags.get(TARGET_TAG, "local")
    place = {
        "ray": f"the Ray cluster at {tags.get(RAY_ADDRESS_TAG)}",
        "k8s": f"Kubernetes, RayJob {tags.get(RAYJOB_TAG)} in namespace {tags.get(K8S_NAMESPACE_TAG)}",
    }.get(target, f"the local Ray on {tags.get(DRIVER_HOST_TAG, 'this machine')}")
    return f"{workers}, {place} (target {target})"


def append_result(uri: str, run_id: str, rule: BestRule) -> None:
    """Replace the note's result (a resumed run's earlier one) with the run's result now."""
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    note = run.data.tags.get(MLFLOW_RUN_NOTE, "").split(RESULT_HEADING)[0].rstrip()
    result = result_text(run, tracking.best_metrics(uri, run_id, rule), rule)
    client.set_tag(run_id, MLFLOW_RUN_NOTE, f"{note}\n\n{result}".lstrip())


def result_text(run, best: dict, rule: BestRule) -> str:
    """'#### Result' and two lines: the best errors and their epoch, epochs trained and wall time."""
    info, tags = run.info, run.data.tags
    trained = int(tags[EPOCH_TAG]) + 1 if EPOCH_TAG in tags else 0
    ended = info.end_time or tracking.now_ms()
    wall = datetime.timedelta(seconds=round((ended - info.start_time) / 1000))
    if "best_val_top1_error" in best:
        line = (
            f"best top-1 error **{best['best_val_top1_error']:.2f}%**, top-5 error "
            f"{best.get('best_val_top5_error', float('nan')):.2f}%, in epoch {int(best['best_epoch']) + 1} "
            f"(best_epoch {int(best['best_epoch'])}; best: {rule.describe()})"
        )
    else:
        line = "no epoch was validated"
    lines = [RESULT_HEADING, f"- {line}", f"- {_count(trained, 'epoch')} trained, wall time {wall}, {info.status}"]
    return "\n".join(lines + _interruptions(tags))


def _interruptions(tags: dict) -> list[str]:
    """The run's preemptions, one line each, and its failures' count (none: no line)."""
    from orchestrator.train.interruptions import preemption_lines

    lines = [f"- {line}" for line in preemption_lines(json.loads(tags.get(PREEMPTION_LOG_TAG, "[]")))]
    failures = int(tags.get(FAILURES_TAG, "0"))
    if failures:
        lines.append(f"- {_count(failures, 'worker-group failure')} (last: {tags.get(LAST_FAILURE_TAG, '?')})")
    return lines


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"
