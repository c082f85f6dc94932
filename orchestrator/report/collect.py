"""The runs a report is about, read from MLflow: a sweep's trial runs, or a list of runs.

A sweep parent is a run tagged orch.kind=sweep; its trials are what the sweep itself counts as
its trials (orchestrator.sweep.records.trial_runs: one run per trial index, the newest; an older
run of a trial is skipped as superseded), each with orch.sweep.overrides (JSON: the dotted spec
keys the trial set). In a list, runs tagged orch.kind=ensemble are ensembles
(orchestrator/evaluation/records.py); every other run is a training run. Only FINISHED runs
count, and of those not the ones ASHA stopped early (orch.sweep.early_stopped: their errors are
a truncated run's); the others are listed as skipped with their status and the reason.
"""

import json
from dataclasses import dataclass, field

from orchestrator.errors import OrchError
from orchestrator.report.configs import dataset_name
from orchestrator.runs.run_lookup import find_run
from orchestrator.runs.tracking import epoch_history
from orchestrator.tags import EARLY_STOPPED_TAG, ENSEMBLE, KIND_TAG, OVERRIDES_TAG, is_sweep

CURVES = ("val_top1_error", "val_top5_error", "train_top1_error", "train_top5_error")  # step = epoch


@dataclass
class TrainedRun:
    """A FINISHED training run: its params, last metrics, tags and per-epoch error curves."""

    run_id: str
    name: str
    params: dict
    metrics: dict
    tags: dict
    history: dict  # {metric: {epoch: value}} for CURVES
    dataset: str  # the dataset's name (configs.dataset_name)

    @property
    def overrides(self) -> dict | None:
        text = self.tags.get(OVERRIDES_TAG)
        return json.loads(text) if text else None


@dataclass
class Collected:
    refs: list[str]
    experiment_id: str
    sweep_id: str | None = None  # the parent run, for a sweep
    trained: list[TrainedRun] = field(default_factory=list)
    ensembles: list = field(default_factory=list)  # mlflow Run objects
    skipped: list[dict] = field(default_factory=list)


def parse_refs(refs) -> list[str]:
    """'A,B' or ['A', 'B,C'] -> ['A', 'B', 'C']."""
    items = [refs] if isinstance(refs, str) else list(refs)
    parsed = [part.strip() for item in items for part in item.split(",") if part.strip()]
    if not parsed:
        raise OrchError("no runs given: pass a sweep parent run id or RUN1,RUN2,... (see `orch runs`)")
    return parsed


def collect(uri: str, refs) -> Collected:
    """The runs `refs` name: one sweep parent (its trials), or runs and ensembles."""
    names = parse_refs(refs)
    runs = [find_run(uri, ref) for ref in names]
    sweeps = [r for r in runs if is_sweep(r)]
    if sweeps and len(runs) > 1:
        raise OrchError(
            f"run {sweeps[0].info.run_id} is a sweep: report on it alone (orch report {sweeps[0].info.run_id})"
        )
    if sweeps:
        return _collect_sweep(uri, names, sweeps[0])
    collected = Collected(names, runs[0].info.experiment_id)
    _add_runs(uri, collected, runs)
    if not collected.trained and not collected.ensembles:
        raise OrchError(
            f"none of {', '.join(names)} is FINISHED: {_statuses(collected.skipped)}; report on finished runs"
        )
    return collected


def _collect_sweep(uri: str, names: list[str], parent) -> Collected:
    from orchestrator.sweep.records import trial_runs

    parent_id = parent.info.run_id
    collected = Collected(names, parent.info.experiment_id, sweep_id=parent_id)
    trials = trial_runs(uri, parent_id)
    for index, runs in trials.items():
        for older in runs[:-1]:
            newest = runs[-1].info.run_id
            collected.skipped.append(_skipped(older, f"superseded by run {newest}, the newest run of trial {index}"))
    _add_runs(uri, collected, [runs[-1] for runs in trials.values()])
    if not collected.trained:
        found = _statuses(collected.skipped) if collected.skipped else "no trial runs"
        raise OrchError(
            f"sweep {parent_id} has no FINISHED trial runs ({found}); report once its trials have finished "
            f"(`orch runs`, `orch resume RUN`)"
        )
    return collected


def _skipped(run, reason: str) -> dict:
    info = run.info
    return {"run_id": info.run_id, "name": info.run_name, "status": info.status, "reason": reason}


def _add_runs(uri: str, collected: Collected, runs: list) -> None:
    for run in runs:
        info, tags = run.info, run.data.tags
        if info.status != "FINISHED":
            collected.skipped.append(_skipped(run, "not FINISHED"))
        elif EARLY_STOPPED_TAG in tags:
            why = f"stopped early ({tags[EARLY_STOPPED_TAG]}): a truncated run, not averaged"
            collected.skipped.append(_skipped(run, why))
        elif tags.get(KIND_TAG) == ENSEMBLE:
            collected.ensembles.append(run)
        else:
            history = {key: epoch_history(uri, info.run_id, key) for key in CURVES}
            if not history["val_top1_error"]:
                raise OrchError(
                    f"run {info.run_id} ({info.run_name}) has no val_top1_error history: it is not a training "
                    f"run that validated an epoch; leave it out of the report (`orch logs {info.run_id}`)"
                )
            params, metrics = run.data.params, run.data.metrics
            collected.trained.append(
                TrainedRun(info.run_id, info.run_name, params, metrics, tags, history, dataset_name(run))
            )


def _statuses(skipped: list[dict]) -> str:
    counts: dict[str, int] = {}
    for item in skipped:
        counts[item["status"]] = counts.get(item["status"], 0) + 1
    return ", ".join(f"{n} {status}" for status, n in counts.items())
