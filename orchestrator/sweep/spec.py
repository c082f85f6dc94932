"""The sweep file: which job every trial starts from and what varies between trials.

    # jobs/sweep_degradation_fashion.yaml
    name: degradation-fashion
    job: demo_fashion_mnist.yaml        # relative to this file
    set: {training.epochs: 6}           # every trial
    cases:                              # optional: variations that set several keys together
      - {model.arch: cifar_plain20, model.options: {}}
      - {model.arch: cifar_resnet20, model.options: {shortcut: A}}
    grid:                               # every combination, in this order (times each case)
      model.arch: [cifar_plain20, cifar_resnet20]
      training.seed: [0, 1]
    random:                             # optional: samples drawn per grid point, seeded
      samples: 2
      seed: 0
      keys: {optimizer.lr: {loguniform: [0.05, 0.5]}}
    max_concurrent_trials: 2            # default: as many as the cluster's resources fit
    scheduler: asha                     # optional early stopping ({kind: asha, grace_period: ...})

A sweep file may say `base: PATH` as a job file does (orchestrator/spec/load.py).
"""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.errors import SpecError
from orchestrator.spec.load import describe_validation_error, parse_override, read_layered

# The keys a sweep file has; a `--set` key outside them sets a job key for every trial.
SWEEP_KEYS = ("name", "job", "set", "cases", "grid", "random", "max_concurrent_trials", "scheduler")
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RandomSpec(_Section):
    samples: int = Field(ge=1, description="trials drawn for each grid point")
    seed: int = 0
    keys: dict[str, dict[str, list]] = Field(description="{spec.key: {choice|uniform|loguniform|randint: [...]}}")

    @field_validator("keys")
    @classmethod
    def _known_distributions(cls, keys):
        for key, dist in keys.items():
            if len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
                raise ValueError(f"{key}: expected one of {', '.join(DISTRIBUTIONS)}, e.g. {{uniform: [0.05, 0.5]}}")
            kind, values = next(iter(dist.items()))
            if kind != "choice" and len(values) != 2:
                raise ValueError(f"{key}: {kind} takes [low, high]")
            if not values:
                raise ValueError(f"{key}: choice needs at least one value")
        return keys


class SchedulerSpec(_Section):
    """Tune's ASHA (asynchronous successive halving), counted in epochs."""

    kind: Literal["asha"] = "asha"
    metric: str = "val_top1_error"
    mode: Literal["min", "max"] = "min"
    grace_period: int = Field(1, ge=1, description="epochs every trial trains before it can be stopped")
    reduction_factor: float = Field(3, gt=1)


class SweepSpec(_Section):
    name: str | None = None
    job: str = Field(description="the job file every trial starts from, relative to the sweep file")
    set: dict[str, object] = Field(default_factory=dict, description="job keys set for every trial")
    cases: list[dict[str, object]] = Field(default_factory=list, description="each sets several job keys at once")
    grid: dict[str, list] = Field(default_factory=dict)
    random: RandomSpec | None = None
    max_concurrent_trials: int | None = Field(None, ge=1)
    scheduler: SchedulerSpec | None = None

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_by_name(cls, value):
        return {"kind": value} if isinstance(value, str) else value

    @field_validator("grid")
    @classmethod
    def _values_listed(cls, grid):
        for key, values in grid.items():
            if not values:
                raise ValueError(f"{key}: list at least one value")
        return grid

    @model_validator(mode="after")
    def _something_varies(self):
        if not self.grid and not self.random and not self.cases:
            raise ValueError(
                "say what varies: grid: {model.arch: [...]}, cases: [{...}, ...] "
                "and/or random: {samples: N, keys: {...}}"
            )
        return self


def load_sweep(path, overrides=()) -> tuple[SweepSpec, Path]:
    """The validated sweep file and the path of its job file. `--set` keys that a sweep file has
    (SWEEP_KEYS) set the sweep; any other key sets that job key in every trial."""
    raw = read_layered(Path(path))
    for item in overrides:
        key, value = parse_override(item)
        if key.split(".")[0] in SWEEP_KEYS and key != "name":
            _set_sweep_key(raw, key, value)
        else:
            raw.setdefault("set", {})[key] = value
    try:
        sweep = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(f"{path}: {describe_validation_error(exc)}") from None
    job = (Path(path).parent / sweep.job).resolve()
    if not job.is_file():
        raise SpecError(f"{path}: job: {sweep.job} not found (the path is relative to the sweep file)")
    return sweep, job


def _set_sweep_key(raw: dict, key: str, value) -> None:
    head, _, rest = key.partition(".")
    if not rest:
        raw[head] = value
    else:  # grid.model.arch=[...]: the rest is one spec key, not a path
        section = raw.setdefault(head, {})
        if not isinstance(section, dict):
            raise SpecError(f"--set {key}: {head} is a value, not a section")
        section[rest] = value
