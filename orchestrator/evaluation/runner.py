"""Evaluation spread over Ray tasks: task r of N scores shard r (data_pipeline.val_shard) with
every model, and the driver sums the counts, so each sample is counted exactly once.

Tasks run on GPUs (one each, bf16 autocast, batches loaded onto the GPU) or on CPUs (fp32):
choose_placement decides from the flags and the cluster's resources, before any task starts.

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

from orchestrator.errors import OrchError
from orchestrator.evaluation.loading import shard_batches
from orchestrator.evaluation.scoring import Tally, mean_softmax_log
from orchestrator.evaluation.tta import Protocol
from orchestrator.models import build_model
from orchestrator.targets import cluster


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


@dataclass(frozen=True)
class Placement:
    """Where the shards run: `tasks` Ray tasks on `device`, each with `threads` CPUs (torch's
    threads and FFCV's loader threads) and, on cuda, one GPU."""

    device: str  # "cuda" | "cpu"
    tasks: int
    threads: int

    @property
    def gpus(self) -> int:
        return self.tasks if self.device == "cuda" else 0

    @property
    def precision(self) -> str:
        return "bf16" if self.device == "cuda" else "fp32"

    def describe(self) -> dict:
        return {
            "device": self.device,
            "gpus": self.gpus,
            "workers": self.tasks,
            "threads_per_worker": self.threads,
            "precision": self.precision,
        }


def check_task_flags(gpus: int | None, workers: int | None) -> None:
    """--gpus counts GPU tasks, --workers CPU tasks: one or the other (--gpus 0 --workers N is CPUs)."""
    if gpus is not None and gpus < 0:
        raise OrchError(f"--gpus {gpus}: must be 0 (CPUs) or more")
    if workers is not None and workers < 1:
        raise OrchError(f"--workers {workers}: must be at least 1")
    if gpus and workers is not None:
        raise OrchError(
            f"--gpus {gpus} and --workers {workers}: --gpus runs one task per GPU, --workers that many "
            "CPU tasks; pass one of them"
        )


def choose_placement(gpus: int | None, workers: int | None, nodes: list[dict]) -> Placement:
    """The device and task count for the flags on a cluster whose alive nodes have `nodes`
    resources ({"CPU": 16, "GPU": 2, ...}). No flag: every GPU the cluster has, else one CPU
    task; --workers N: N CPU tasks; --gpus 0: CPUs; --gpus N: N GPU tasks."""
    check_task_flags(gpus, workers)
    have = sum(int(n.get("GPU", 0)) for n in nodes)  # whole GPUs: a task takes one
    if gpus is None:
        gpus = have if workers is None else 0
    if gpus > have:
        fix = f"pass --gpus {have} or fewer (0 for CPUs)" if have else "pass --gpus 0 to evaluate on CPUs"
        raise OrchError(f"--gpus {gpus}: the Ray cluster has {have} GPU{'s' if have != 1 else ''}; {fix}")
    if gpus == 0:
        tasks = workers or 1
        return Placement("cpu", tasks, _share([n.get("CPU", 0) for n in nodes], tasks))
    # Each GPU task gets a share of the CPUs of the nodes with GPUs, for FFCV's loader threads.
    return Placement("cuda", gpus, _share([n.get("CPU", 0) for n in nodes if n.get("GPU", 0) >= 1], gpus))


def place(gpus: int | None, workers: int | None) -> Placement:
    """choose_placement on the Ray cluster this process joins (or starts)."""
    cluster.connect()
    return choose_placement(gpus, workers, [n["Resources"] for n in ray.nodes() if n.get("Alive")])


def _share(cpus: list[float], tasks: int) -> int:
    """An equal share of the CPUs, at least 1, at most what one node has."""
    return int(max(1, min(sum(cpus) // tasks, max(cpus, default=1))))


def run(request: Request, states: list[dict], placement: Placement) -> dict:
    """Evaluate on `placement.tasks` Ray tasks. Returns {counts (rows: models, then the
    combination), images, images_per_second, seconds, and placement.describe()'s keys}.

    images_per_second: images over the span from the first worker's first batch to the last
    worker's end, data loading included (Ray start, model loading and FFCV's pipeline
    compilation before the first batch excluded); `seconds` is the whole call.
    """
    cluster.connect()
    world, threads, device = placement.tasks, placement.threads, placement.device
    refs = [ray.put(state) for state in states]
    task = _shard_task.options(num_cpus=threads, num_gpus=1 if device == "cuda" else 0)
    started = time.perf_counter()
    futures = [task.remote(request, rank, world, threads, device, *refs) for rank in range(world)]
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
        **placement.describe(),
    }


def evaluate_shard(
    request: Request, states: list[dict], rank: int, world: int, threads: int, device: str = "cpu"
) -> dict:
    """Score shard `rank` of `world` with every model on `device` (a plain function: it runs
    without Ray too). On cuda: bf16 autocast, batches loaded onto the GPU, counts kept there."""
    torch.set_num_threads(threads)
    cuda = device == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # one shape per view: tuned once, reused every batch
    models = [_ready(entry, state, device) for entry, state in zip(request.models, states)]
    tally = Tally(len(models), request.weights, request.combine, device)
    batches = shard_batches(
        request.data,
        request.protocol,
        batch_size=request.batch_size,
        threads=threads,
        rank=rank,
        world=world,
        device=device,
    )
    torch.set_num_threads(threads)  # importing ffcv may have changed it
    images, start = 0, None
    with torch.inference_mode():
        for raw, labels in batches:
            # The clock starts at the first batch: FFCV compiles its pipeline (seconds) before it.
            start = start or time.time()
            views = list(request.protocol.views(raw))
            scores = [
                mean_softmax_log([forward(model, normalize(v, mean, std), cuda) for v in views])
                for model, mean, std in models
            ]
            tally.update(scores, labels)
            images += labels.numel()
    counts = tally.as_tensor()  # the one read from the device
    end = time.time()
    return {"counts": counts, "images": images, "start": start or end, "end": end}


@ray.remote
def _shard_task(request: Request, rank: int, world: int, threads: int, device: str, *states) -> dict:
    return evaluate_shard(request, list(states), rank, world, threads, device)


def forward(model, images: torch.Tensor, cuda: bool) -> torch.Tensor:
    """Logits in float32: computed in bf16 on a GPU, fp32 on the CPU."""
    if not cuda:
        return model(images)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return model(images).float()


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return ((images - mean) / std).contiguous(memory_format=torch.channels_last)


def _ready(entry: ModelEntry, state: dict, device: str = "cpu"):
    model = build_model(entry.arch, entry.num_classes, **entry.options)
    model.load_state_dict(state)
    model = model.to(device, memory_format=torch.channels_last).eval()
    mean = torch.tensor(entry.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(entry.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return model, mean, std
