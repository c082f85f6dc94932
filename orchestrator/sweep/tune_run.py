"""Running a sweep's trials on Ray Tune, Ray's trial scheduler.

With Ray Train V2 a Tune trial is a driver function: each trial's function (run_trial, in a Tune
actor that holds no CPU) creates or continues the trial's child run and drives one Ray Train run
for it through targets.local.drive, exactly as `orch submit` does, so every trial has its own
checkpoints, recovery and exact metrics. The trainer's EpochsToTune callback hands each epoch's
report to Tune (for ASHA and for the driver's progress lines). Tune decides when a trial starts
(max_concurrent_trials) and, with `scheduler: asha`, when one stops early.
"""

import os

from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune import Callback
from ray.tune.integration.ray_train import TuneReportCallback

from orchestrator.console import terminal
from orchestrator.errors import OrchError
from orchestrator.runs import tracking
from orchestrator.sweep import records
from orchestrator.sweep.spec import SweepSpec
from orchestrator.sweep.trials import Trial, from_json
from orchestrator.tags import CHECKPOINT_DIR_TAG, EARLY_STOPPED_TAG, EPOCH_TAG, RESUMED_FROM_TAG, STOP_TAG, TARGET_TAG

TIME_ATTR = "epochs_done"  # what Tune counts a trial's progress in: whole epochs


class EpochsToTune(TuneReportCallback):
    """Forward each epoch's report (not a step checkpoint's) to Tune, with epochs_done."""

    def after_report(self, run_context, metrics, checkpoint):
        if metrics and metrics[0].get("report") != "step":
            report = {k: v for k, v in metrics[0].items() if isinstance(v, (int, float))}
            report[TIME_ATTR] = int(metrics[0]["epoch"]) + 1
            super().after_report(run_context, [report], None)


def run_trial(config: dict, plan: dict) -> None:
    """One trial, in its Tune actor: its child run trained to the end (created, or continued
    from its latest good checkpoint when an earlier attempt left one), unless the sweep was
    stopped. An error ends the child run FAILED and is not raised: the child's status is the
    record, and Tune goes on. Nothing is returned (a last result without the scheduler's metric
    would be refused)."""
    from orchestrator.targets.local import drive
    from orchestrator.targets.naming import checkpoint_dir
    from orchestrator.train.faults import FAULT_VARIABLE

    tracking.quiet_mlflow()
    if plan.get(FAULT_VARIABLE):  # the tests' fault hook, read here by drive() as `orch submit` reads it
        os.environ[FAULT_VARIABLE] = plan[FAULT_VARIABLE]
    uri, parent_id = plan["uri"], plan["parent_id"]
    if STOP_TAG in MlflowClient(uri).get_run(parent_id).data.tags:
        return  # `orch stop --save PARENT`: no trial starts any more; `orch resume PARENT` runs it
    trial = from_json([plan["trials"][config["trial"]]])[0]
    child = records.children(uri, parent_id).get(trial.index)
    run_id = child.info.run_id if child else records.create_child(uri, parent_id, trial)
    try:
        if child is not None:
            _continue(uri, child, trial)
            return
        run_dir = checkpoint_dir(trial.spec, run_id)
        tracking.set_tags(uri, run_id, {CHECKPOINT_DIR_TAG: run_dir, **_trial_tags(plan)})
        drive(trial.spec, uri, run_id, run_dir, callbacks=(EpochsToTune(),), watch=False)
    except OrchError as exc:
        tracking.end_if_running(uri, run_id, "FAILED", str(exc))
    except BaseException as exc:
        tracking.end_if_running(uri, run_id, "FAILED", f"{type(exc).__name__}: {exc}")
        raise


def _continue(uri: str, child, trial: Trial) -> None:
    """A child an earlier attempt left (stopped or failed): on from its restart point, or from
    the start when it saved no checkpoint, in the same run."""
    from orchestrator.recovery.restart import restart_point
    from orchestrator.targets import resume
    from orchestrator.targets.local import drive
    from orchestrator.targets.naming import checkpoint_dir

    run_id = child.info.run_id
    run_dir = child.data.tags.get(CHECKPOINT_DIR_TAG) or checkpoint_dir(trial.spec, run_id)
    good = restart_point(run_dir).location
    resume.reopen_run(uri, child, trial.spec, (), {TARGET_TAG: child.data.tags.get(TARGET_TAG, "local")}, good)
    tracking.set_tags(uri, run_id, {CHECKPOINT_DIR_TAG: run_dir, **({RESUMED_FROM_TAG: good} if good else {})})
    drive(trial.spec, uri, run_id, run_dir, resume_from=good, callbacks=(EpochsToTune(),), watch=False)


def _trial_tags(plan: dict) -> dict:
    from orchestrator.runs.driver import driver_tags

    return {TARGET_TAG: plan["target"], **driver_tags()}


class EarlyStopping(tune.schedulers.ASHAScheduler):
    """Tune's ASHA, remembering which trials it stopped. A trial that reaches the last epoch
    is left to finish (stop_last_trials=False): its run ends as any run does."""

    def __init__(self, **settings):
        super().__init__(stop_last_trials=False, **settings)
        self.stopped: set[str] = set()

    def on_trial_result(self, tune_controller, trial, result):
        action = super().on_trial_result(tune_controller, trial, result)
        if action == self.STOP:
            self.stopped.add(trial.trial_id)
        return action


class SweepWatch(Callback):
    """On the driver: a line as each trial starts, ends an epoch and ends; the run of a trial
    ASHA stopped (its actor gone mid-training) is ended here, FINISHED with its best so far."""

    def __init__(self, uri: str, parent_id: str, trials: list[Trial], scheduler: EarlyStopping | None):
        self.uri, self.parent_id, self.scheduler = uri, parent_id, scheduler
        self.trials = {t.index: t for t in trials}

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
        if status == "RUNNING" and self.scheduler and trial.trial_id in self.scheduler.stopped:
            status = self._early_stopped(child, self.trials[index])
        terminal.say(f"{self._name(trial)}: {status}")

    def _early_stopped(self, child, trial: Trial) -> str:
        from orchestrator.recovery.best import BestRule

        run_id, epoch = child.info.run_id, child.data.tags.get(EPOCH_TAG, "?")
        tracking.log_best(self.uri, run_id, BestRule.of(trial.spec.checkpoint))
        tracking.set_tags(self.uri, run_id, {EARLY_STOPPED_TAG: f"ASHA, after epoch {epoch}"})
        tracking.end_run(self.uri, run_id, "FINISHED")
        return "FINISHED (stopped early by ASHA)"


def build_tuner(
    sweep: SweepSpec, trials: list[Trial], pending: list[int], plan: dict, concurrency: int, storage: str
) -> tune.Tuner:
    """A Tuner over the `pending` trials' indices."""
    trainable = tune.with_parameters(run_trial, plan=plan)
    scheduler = None
    if sweep.scheduler:
        scheduler = EarlyStopping(
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
            callbacks=[SweepWatch(plan["uri"], plan["parent_id"], trials, scheduler)],
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
        ),
    )
