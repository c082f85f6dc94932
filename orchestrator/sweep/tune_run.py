"""Running a sweep's trials on Ray Tune, Ray's trial scheduler.

With Ray Train V2 a Tune trial is a driver function: each trial's function (run_trial, in a Tune
actor that holds no CPU) creates or continues the trial's child run and drives one Ray Train run
for it through targets.local.drive, exactly as `orch submit` does, so every trial has its own
checkpoints, recovery and exact metrics. The trainer's EpochsToTune callback hands each epoch's
report to Tune (for ASHA and for the driver's progress lines). Tune decides when a trial starts
(max_concurrent_trials) and, with `scheduler: asha`, when one stops early.
"""

import os
import signal

from ray import tune
from ray.tune import Callback
from ray.tune.integration.ray_train import TuneReportCallback

from orchestrator import terminal, tracking
from orchestrator.errors import OrchError
from orchestrator.sweep import records
from orchestrator.sweep.spec import SweepSpec
from orchestrator.sweep.trials import Trial, from_json, resources

TIME_ATTR = "epochs_done"  # what Tune counts a trial's progress in: whole epochs
SWEEP_FAULT = "ORCH_TEST_SWEEP_FAULT"  # test-only: {"kill_driver_after_trials": N}


class EpochsToTune(TuneReportCallback):
    """Forward each epoch's report (not a step checkpoint's) to Tune, with epochs_done."""

    def after_report(self, run_context, metrics, checkpoint):
        if metrics and metrics[0].get("report") != "step":
            report = {k: v for k, v in metrics[0].items() if isinstance(v, (int, float))}
            report[TIME_ATTR] = int(metrics[0]["epoch"]) + 1
            super().after_report(run_context, [report], None)


def run_trial(config: dict, plan: dict) -> dict:
    """One trial, in its Tune actor: its child run trained to the end (created, or continued
    from its latest good checkpoint when an earlier attempt left one). Errors end the child run
    and are returned, not raised: the child's status is the record, and Tune goes on."""
    from orchestrator.targets.local import checkpoint_dir, drive

    tracking.quiet_mlflow()
    uri, parent_id = plan["uri"], plan["parent_id"]
    trial = from_json([plan["trials"][config["trial"]]])[0]
    child = records.children(uri, parent_id).get(trial.index)
    run_id = child.info.run_id if child else records.create_child(uri, parent_id, trial)
    try:
        if child is not None:
            return _continue(uri, child, trial)
        run_dir = checkpoint_dir(trial.spec, run_id)
        tracking.set_tags(uri, run_id, {"orch.checkpoint_dir": run_dir, **_trial_tags(plan)})
        drive(trial.spec, uri, run_id, run_dir, callbacks=(EpochsToTune(),), watch=False)
        return {"status": "FINISHED"}
    except OrchError as exc:
        tracking.end_if_running(uri, run_id, "FAILED", str(exc))
        return {"status": "FAILED", "error": str(exc)}
    except BaseException as exc:
        tracking.end_if_running(uri, run_id, "FAILED", f"{type(exc).__name__}: {exc}")
        raise


def _continue(uri: str, child, trial: Trial) -> dict:
    """A child an earlier attempt left (stopped or failed): on from its restart point, or from
    the start when it saved no checkpoint, in the same run."""
    from orchestrator import resume
    from orchestrator.restart import restart_point
    from orchestrator.targets.local import checkpoint_dir, drive

    run_id = child.info.run_id
    run_dir = child.data.tags.get("orch.checkpoint_dir") or checkpoint_dir(trial.spec, run_id)
    good = restart_point(run_dir).location
    resume._reopen(uri, child, trial.spec, (), {"orch.target": child.data.tags.get("orch.target", "local")}, good)
    tracking.set_tags(uri, run_id, {"orch.checkpoint_dir": run_dir, **({"orch.resumed_from": good} if good else {})})
    drive(trial.spec, uri, run_id, run_dir, resume_from=good, callbacks=(EpochsToTune(),), watch=False)
    return {"status": "FINISHED"}


def _trial_tags(plan: dict) -> dict:
    from orchestrator.lifecycle import driver_tags

    return {"orch.target": plan["target"], **driver_tags()}


class SweepWatch(Callback):
    """On the driver: a line as each trial starts, ends an epoch and ends; a child left RUNNING
    by a trial Tune stopped (ASHA) is ended here. Test-only: $ORCH_TEST_SWEEP_FAULT
    {"kill_driver_after_trials": N} SIGKILLs this process once N trials have ended."""

    def __init__(self, uri: str, parent_id: str, trials: list[Trial], early_stopping: bool):
        self.uri, self.parent_id, self.early_stopping = uri, parent_id, early_stopping
        self.trials = {t.index: t for t in trials}
        self.ended = 0
        self.kill_after = _fault()

    def _name(self, trial) -> str:
        t = self.trials[trial.config["trial"]]
        return f"trial {t.index} [{t.label}]"

    def on_trial_start(self, iteration, trials, trial, **info):
        terminal.say(f"{self._name(trial)}: started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if TIME_ATTR not in result:
            return
        epochs = self.trials[trial.config["trial"]].spec.training.epochs
        values = ", ".join(
            f"{label} {result[key]:.2f}%"
            for key, label in (("train_top1_error", "train top-1"), ("val_top1_error", "val top-1"))
            if key in result
        )
        terminal.say(f"{self._name(trial)}: epoch {result[TIME_ATTR]}/{epochs}  {values}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial)

    def _ended(self, trial) -> None:
        index = trial.config["trial"]
        child = records.children(self.uri, self.parent_id).get(index)
        status = child.info.status if child else "NOT_STARTED"
        if status == "RUNNING" and self.early_stopping and trial.status == "TERMINATED":
            epoch = child.data.tags.get("orch.epoch", "?")
            tracking.set_tags(self.uri, child.info.run_id, {"orch.sweep.early_stopped": f"ASHA after epoch {epoch}"})
            tracking.end_run(self.uri, child.info.run_id, "FINISHED")
            status = "FINISHED (stopped early by ASHA)"
        terminal.say(f"{self._name(trial)}: {status}")
        self.ended += 1
        if self.kill_after is not None and self.ended >= self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)


def _fault() -> int | None:
    import json

    text = os.environ.get(SWEEP_FAULT)
    return int(json.loads(text)["kill_driver_after_trials"]) if text else None


def build_tuner(
    sweep: SweepSpec, trials: list[Trial], pending: list[int], plan: dict, concurrency: int, storage: str
) -> tune.Tuner:
    """A Tuner over the `pending` trials' indices."""
    trainable = tune.with_parameters(run_trial, plan=plan)
    scheduler = None
    if sweep.scheduler:
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr=TIME_ATTR,
            metric=sweep.scheduler.metric,
            mode=sweep.scheduler.mode,
            max_t=max(t.spec.training.epochs for t in trials),
            grace_period=sweep.scheduler.grace_period,
            reduction_factor=sweep.scheduler.reduction_factor,
        )
    storage_path, name = storage.rstrip("/").rsplit("/", 1)
    return tune.Tuner(
        # The trial's Ray Train workers hold its CPUs and GPUs; its driver function holds none (a
        # placement group's bundle may not be empty: 1 MiB of memory).
        tune.with_resources(trainable, {"memory": 2**20}),
        param_space={"trial": tune.grid_search(pending)},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, scheduler=scheduler, reuse_actors=False),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            verbose=0,
            callbacks=[SweepWatch(plan["uri"], plan["parent_id"], trials, early_stopping=scheduler is not None)],
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
        ),
    )


def describe_resources(trial: Trial) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in resources(trial.spec).items())
