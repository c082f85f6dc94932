"""Evaluation spread over Ray tasks: task r of N scores shard r (data_pipeline.val_shard) with
every model, and the driver sums the counts, so each sample is counted exactly once.

Every batch goes through every model, so an ensemble's members and its combination are
scored on the same images in one pass. Model weights travel through Ray's object store
(ray.put once), so workers on other nodes need no access to the checkpoint directories; they
do need to read the .beton file.
"""

import time
from dataclasses import dataclass, field

import click
import ray
import torch

from orchestrator import cluster
from orchestrator.errors import OrchError
from orchestrator.evaluation.loading import shard_batches
from orchestrator.evaluation.scoring import Tally, mean_softmax_log
from orchestrator.evaluation.tta import Protocol
from orchestrator.models import build_model


class EvaluationFailed(OrchError):
    """A worker failed while evaluating."""

    exit_code = 1


@dataclass(frozen=True)
class ModelEntry:
    """What a worker needs to rebuild one model and feed it: mean and std on the 0-255 scale."""

    arch: str
    num_classes: int
    options: dict
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class Request:
    data: str
    protocol: Protocol
    models: list[ModelEntry]
    weights: list[float] = field(default_factory=lambda: [1.0])
    combine: str = "softmax"
    batch_size: int = 128


def run(request: Request, states: list[dict], workers: int) -> dict:
    """Evaluate on `workers` Ray tasks. Returns {counts (rows: models, then the combination),
    images, images_per_second, seconds, threads_per_worker}.

    images_per_second: images over the span from the first worker's first batch to the last
    worker's end, data loading included (Ray start, model loading and FFCV's pipeline
    compilation before the first batch excluded); `seconds` is the whole call.
    """
    cluster.connect()
    threads = threads_per_worker(workers)
    refs = [ray.put(state) for state in states]
    task = _shard_task.options(num_cpus=threads)
    started = time.perf_counter()
    futures = [task.remote(request, rank, workers, threads, *refs) for rank in range(workers)]
    try:
        shards = ray.get(futures)
    except KeyboardInterrupt:
        for future in futures:
            ray.cancel(future, force=True)
        raise click.exceptions.Abort() from None  # main() prints "orch: aborted", exit 130
    except ray.exceptions.RayError as exc:  # a task raised, or its worker died
        cause = getattr(exc, "cause", None) or exc
        if isinstance(cause, OrchError):
            raise type(cause)(str(cause)) from None
        lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
        raise EvaluationFailed(
            f"evaluation failed on a worker: {lines[-1] if lines else type(cause).__name__}"
        ) from None
    seconds = time.perf_counter() - started
    images = sum(s["images"] for s in shards)
    busy = [s for s in shards if s["images"]]
    span = max(s["end"] for s in busy) - min(s["start"] for s in busy) if busy else 0.0
    return {
        "counts": sum(s["counts"] for s in shards),
        "images": images,
        "images_per_second": images / span if span > 0 else 0.0,
        "seconds": seconds,
        "threads_per_worker": threads,
    }


def threads_per_worker(workers: int) -> int:
    """An equal share of the cluster's CPUs, at least 1, at most what one node has."""
    nodes = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    total, largest = sum(nodes), max(nodes, default=1)
    return int(max(1, min(total // workers, largest)))


def evaluate_shard(request: Request, states: list[dict], rank: int, world: int, threads: int) -> dict:
    """Score shard `rank` of `world` with every model (a plain function: it runs without Ray too)."""
    torch.set_num_threads(threads)
    models = [_ready(entry, state) for entry, state in zip(request.models, states)]
    tally = Tally(len(models), request.weights, request.combine)
    batches = shard_batches(
        request.data, request.protocol, batch_size=request.batch_size, threads=threads, rank=rank, world=world
    )
    torch.set_num_threads(threads)  # importing ffcv may have changed it
    images, start = 0, None
    with torch.inference_mode():
        for raw, labels in batches:
            # The clock starts at the first batch: FFCV compiles its pipeline (seconds) before it.
            start = start or time.time()
            views = list(request.protocol.views(raw))
            scores = [mean_softmax_log([model(normalize(v, mean, std)) for v in views]) for model, mean, std in models]
            tally.update(scores, labels)
            images += labels.numel()
    end = time.time()
    return {"counts": tally.as_tensor(), "images": images, "start": start or end, "end": end}


@ray.remote
def _shard_task(request: Request, rank: int, world: int, threads: int, *states) -> dict:
    return evaluate_shard(request, list(states), rank, world, threads)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return ((images - mean) / std).contiguous(memory_format=torch.channels_last)


def _ready(entry: ModelEntry, state: dict):
    model = build_model(entry.arch, entry.num_classes, **entry.options)
    model.load_state_dict(state)
    model = model.to(memory_format=torch.channels_last).eval()
    mean = torch.tensor(entry.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(entry.std, dtype=torch.float32).view(1, 3, 1, 1)
    return model, mean, std
