"""A sweep's trials, listed before anything runs: each case (a set of keys varied together) times
every grid combination (in the order the file lists keys and values), times `random.samples`
seeded draws. Each trial is the job with its
overrides, validated as one spec, so a bad key or value fails before a run exists. The list is
fixed when the sweep starts and kept on its parent run, so a resume runs the same trials."""

import itertools
import math
import random as stdlib_random
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import SpecError
from orchestrator.spec.load import read_layered, set_dotted, spec_from_dict
from orchestrator.spec.schema import JobSpec
from orchestrator.sweep.spec import SweepSpec
from orchestrator.targets import cluster


@dataclass(frozen=True)
class Trial:
    index: int
    overrides: dict  # the varied keys: {"model.arch": "cifar_plain20", "training.seed": 1}
    spec: JobSpec

    @property
    def label(self) -> str:
        """arch=cifar_plain20 seed=1: each varied key by its last part."""
        return " ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in self.overrides.items())

    def as_json(self) -> dict:
        return {"index": self.index, "overrides": self.overrides, "spec": self.spec.model_dump(mode="json")}


def expand(sweep: SweepSpec, job_path: Path, source: str) -> list[Trial]:
    """The trials of `sweep` over the job at `job_path`; `source` names the sweep file in errors."""
    job = read_layered(job_path)
    trials = []
    for index, overrides in enumerate(combinations(sweep)):
        raw = _with(job, {**sweep.set, **overrides})
        spec = spec_from_dict(raw, source=f"{source} (trial {index}: {_describe(overrides)})")
        trials.append(Trial(index, overrides, spec))
    return trials


def from_json(items: list[dict]) -> list[Trial]:
    """The trials a parent run recorded (sweep/trials.json)."""
    return [Trial(t["index"], t["overrides"], spec_from_dict(t["spec"], source="sweep/trials.json")) for t in items]


def combinations(sweep: SweepSpec) -> list[dict]:
    grid = [dict(zip(sweep.grid, values)) for values in itertools.product(*sweep.grid.values())]
    grid = [{**case, **point} for case in sweep.cases or [{}] for point in grid or [{}]]
    if not sweep.random:
        return grid
    rng = stdlib_random.Random(sweep.random.seed)
    return [
        {**point, **{key: _draw(rng, dist) for key, dist in sweep.random.keys.items()}}
        for point in grid
        for _ in range(sweep.random.samples)
    ]


def resources(spec: JobSpec) -> dict:
    """What one trial holds while it trains: its workers' CPUs (and GPUs)."""
    per_worker = cluster.worker_resources(spec.scaling)
    return {name: amount * spec.scaling.num_workers for name, amount in per_worker.items()}


def concurrency(trials: list[Trial], asked: int | None, nodes: list[dict] | None = None) -> int:
    """`max_concurrent_trials`, else as many of the largest trial as the cluster's resources fit
    (at least one)."""
    if asked:
        return asked
    import ray

    nodes = nodes if nodes is not None else [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    need = max((resources(t.spec) for t in trials), key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)))
    fits = [math.floor(sum(n.get(k, 0) for n in nodes) / v) for k, v in need.items() if v > 0]
    return max(1, min(fits, default=1))


def _with(job: dict, overrides: dict) -> dict:
    import copy

    raw = copy.deepcopy(job)
    for key, value in overrides.items():
        try:
            set_dotted(raw, key, value)
        except SpecError as exc:
            raise SpecError(str(exc).replace("--set ", "")) from None
    return raw


def _draw(rng: stdlib_random.Random, dist: dict):
    kind, values = next(iter(dist.items()))
    if kind == "choice":
        return rng.choice(values)
    low, high = values
    if kind == "randint":
        return rng.randint(int(low), int(high))
    if kind == "loguniform":
        return float(f"{math.exp(rng.uniform(math.log(low), math.log(high))):.6g}")
    return float(f"{rng.uniform(low, high):.6g}")


def _describe(overrides: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "the job as it is"
