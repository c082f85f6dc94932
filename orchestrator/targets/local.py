"""Run a job on the Ray this process can reach (started embedded when none is running)."""

import signal
import threading

from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from orchestrator import startup_trace
from orchestrator.console import terminal
from orchestrator.console.progress import EpochPrinter
from orchestrator.errors import JobFailed, JobInterrupted
from orchestrator.recovery import restart
from orchestrator.recovery.best import BestRule
from orchestrator.runs import run_record, telemetry, tracking
from orchestrator.runs.driver import driver_tags
from orchestrator.runs.outcome import JobOutcome, read_outcome
from orchestrator.spec import preflight
from orchestrator.spec.schema import JobSpec
from orchestrator.tags import BEST_CHECKPOINT_TAG, CHECKPOINT_DIR_TAG, TARGET_TAG
from orchestrator.targets import cluster
from orchestrator.targets.naming import checkpoint_dir
from orchestrator.train import faults, interruptions, notices
from orchestrator.train.entry import train_worker
from orchestrator.train.epoch_logger import EpochLogger


def run_local(
    spec: JobSpec, spec_path: str | None = None, *, progress_to_stderr: bool = False, checked: bool = False
) -> JobOutcome:
    """Train `spec` to the end and return what the run recorded.

    Every check that can fail on bad input runs before the MLflow run exists; once it does,
    it is ended FINISHED, FAILED or KILLED whatever happens. `checked`: the spec and data were
    checked (preflight) and Ray connected by the caller (`orch submit`, which overlaps them).
    """
    if not checked:
        preflight.tell_warnings(preflight.plan(spec))  # every check on the spec and its data, before anything exists
        terminal.say(terminal.connecting())
        cluster.connect()
    cluster.check_resources(spec.scaling)
    uri = tracking.tracking_uri(spec)
    run_id = tracking.start_run(spec, spec_path, uri)
    tracking.set_tags(
        uri, run_id, {CHECKPOINT_DIR_TAG: checkpoint_dir(spec, run_id), TARGET_TAG: "local", **driver_tags()}
    )
    startup_trace.mark("driver: run created")
    return drive(spec, uri, run_id, checkpoint_dir(spec, run_id), progress_to_stderr=progress_to_stderr)


def drive(
    spec: JobSpec,
    uri: str,
    run_id: str,
    run_dir: str,
    *,
    resume_from: str | None = None,
    progress_to_stderr: bool = False,
    callbacks: tuple = (),
    watch: bool = True,
) -> JobOutcome:
    """Fit the trainer for an existing, RUNNING MLflow run whose checkpoints live in `run_dir`,
    and end the run FINISHED, FAILED or KILLED. `callbacks` go to Ray Train with orch's own (a
    sweep's trial adds Tune's); watch=False prints no progress (a sweep's driver prints it)."""
    # The datasets and description, read where the data is, while the workers start.
    recording = threading.Thread(target=run_record.begin, args=(spec, uri, run_id), name="orch-record", daemon=True)
    recording.start()
    done = set(tracking.epoch_history(uri, run_id))
    printer = EpochPrinter(uri, run_id, spec.training.epochs, err=progress_to_stderr, skip=done) if watch else None
    status, error, result = "FAILED", None, None
    if printer:
        terminal.say(terminal.starting_workers(spec.scaling))
        printer.start()
    try:
        trainer = build_trainer(spec, uri, run_id, resume_from, run_dir=run_dir, callbacks=callbacks)
        startup_trace.mark("driver: trainer started")
        with notices.StopRelay(uri, run_id):
            result = fit(trainer)
        stopped = stop_message(result, run_id)
        status = "KILLED" if stopped else "FINISHED"
        error = stopped
    except (KeyboardInterrupt, SystemExit):
        # Ray Train's own SIGINT handler aborts the run and exits via SystemExit.
        status = "KILLED"
        raise JobInterrupted(f"run {run_id} interrupted: marked KILLED, checkpoints kept") from None
    except Exception as exc:  # Ray wraps worker errors; keep the cause, record it whole
        error = str(exc)
        raise JobFailed(f"run {run_id} FAILED: {root_cause(exc)}") from None
    finally:
        try:
            recording.join()
            if printer:
                printer.stop()
            tracking.log_best(uri, run_id, BestRule.of(spec.checkpoint))
        finally:
            tracking.end_run(uri, run_id, status, error)
    best_checkpoint = _best_checkpoint(run_dir) if result is not None else None
    if best_checkpoint:
        tracking.set_tags(uri, run_id, {BEST_CHECKPOINT_TAG: best_checkpoint})
    run_record.finish(spec, uri, run_id, status, best_checkpoint)  # the result; a FINISHED run's model
    if status == "KILLED":
        raise JobInterrupted(error)
    return read_outcome(uri, run_id)


def stop_message(result, run_id: str) -> str | None:
    """Why training ended before its last epoch (`orch stop --save`), from its last report; None
    when it ran to the end."""
    metrics = getattr(result, "metrics", None) or {}
    if not metrics.get("stopped_by"):
        return None
    checkpoint = getattr(result, "checkpoint", None)
    saved = f"checkpoint {checkpoint.path}" if checkpoint is not None else "its last checkpoint"
    return (
        f"run {run_id} stopped by `{metrics['stopped_by']}` in epoch {metrics['epoch']} after "
        f"{metrics['batches']} batches: marked KILLED; `orch resume {run_id}` continues from {saved}"
    )


def build_trainer(
    spec: JobSpec,
    uri: str,
    run_id: str,
    resume_from: str | None = None,
    run_dir: str | None = None,
    callbacks: tuple = (),
) -> TorchTrainer:
    scaling = spec.scaling
    # Ray Train's folder for the run is storage_path/name; a resumed run reuses it, so Ray's
    # own checkpoint bookkeeping (retention, the latest checkpoint after a failure) carries on.
    run_dir = run_dir or checkpoint_dir(spec, run_id)
    storage, name = run_dir.rstrip("/").rsplit("/", 1)
    return TorchTrainer(
        train_worker,
        train_loop_config={
            "spec": spec.model_dump(mode="json"),
            "resume_from": resume_from,
            "fault": faults.from_env(run_dir, run_id),
            "telemetry": telemetry.config(spec, uri, run_id),
            "run": {"tracking_uri": uri, "run_id": run_id},
            "trace": startup_trace.path(),  # bench/startup.py's stage marks
        },
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=cluster.worker_resources(scaling),
            placement_strategy=scaling.placement,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(
                num_to_keep=spec.checkpoint.num_to_keep,
                checkpoint_score_attribute=spec.checkpoint.metric,
                checkpoint_score_order=spec.checkpoint.mode,
            ),
            failure_config=FailureConfig(
                max_failures=spec.training.max_failures,
                max_preemption_failures=spec.training.max_preemption_failures,
            ),
            callbacks=[
                EpochLogger(uri, run_id),
                restart.keeper(uri, run_id, verified=resume_from),  # on the controller: what a new group gets
                interruptions.recorder(uri, run_id),  # on the controller: preemptions and failures
                notices.sigterm_callback(spec.training.termination_grace_s),  # on each worker: SIGTERM is a notice
                *([startup_trace.controller_callback(startup_trace.path())] if startup_trace.path() else []),
                *callbacks,
            ],
        ),
    )


def fit(trainer: TorchTrainer):
    """trainer.fit(), leaving SIGINT as it found it: Ray Train installs a handler bound to
    this run's controller and does not remove it."""
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if on_main else None
    try:
        return trainer.fit()
    finally:
        if on_main:
            signal.signal(signal.SIGINT, previous)


def root_cause(exc: BaseException) -> str:
    """The last line of the innermost error: what a user needs, without Ray's wrapping."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _best_checkpoint(run_dir: str) -> str | None:
    """The run's best kept checkpoint by its rule (orchestrator/recovery/best.py), as evaluate picks it."""
    from orchestrator.recovery.checkpoints import CheckpointError, pick

    try:
        return str(pick(run_dir, "best", run_dir))
    except CheckpointError:
        return None
