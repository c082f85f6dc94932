"""Every name orch writes into MLflow besides the spec's params and the epoch metrics: the tag keys
of its runs, the kinds of run, the step metrics' keys, and the tests on them. What a run records,
one key a line. Imports nothing: every module of orch may import it.

Epoch metrics (train_loss, val_top1_error, ...) are listed in orchestrator/runs/tracking.py.
"""

# --- a job's run: created by the driver (orchestrator/runs/tracking.py), tagged where it runs
SPEC_FILE_TAG = "orch.spec_file"  # the YAML it was submitted from
TARGET_TAG = "orch.target"  # local, ray or k8s: where its job runs
CHECKPOINT_DIR_TAG = "orch.checkpoint_dir"  # its checkpoints' folder (a path or a URI)
EPOCHS_TAG = "orch.epochs"  # training.epochs as a resume raised it (params cannot change)
ERROR_TAG = "orch.error"  # why it ended FAILED or KILLED
# who drives it (orchestrator/runs/driver.py): the process `orch stop` signals
DRIVER_PID_TAG = "orch.driver_pid"
DRIVER_HOST_TAG = "orch.driver_host"
DRIVER_STARTED_TAG = "orch.driver_started"  # tells the driver from a later process with its pid
DRIVER_NODE_TAG = "orch.driver_node_id"  # the Ray node of a cluster job's driver
# its job on a Ray cluster (orchestrator/targets/ray_cluster.py) or on Kubernetes (kuberay.py)
RAY_ADDRESS_TAG = "orch.ray_address"
RAY_JOB_ID_TAG = "orch.ray_job_id"
K8S_NAMESPACE_TAG = "orch.k8s_namespace"
RAYJOB_TAG = "orch.rayjob"
K8S_IMAGE_TAG = "orch.k8s_image"  # a Kubernetes sweep's image, for its next RayJob
JOB_TAGS = (TARGET_TAG, RAY_ADDRESS_TAG, RAY_JOB_ID_TAG, K8S_NAMESPACE_TAG, RAYJOB_TAG)  # the job a run last ran as

# --- training, as the Ray Train controller and rank 0 record it (orchestrator/train/)
EPOCH_TAG = "orch.epoch"  # the newest epoch logged in full (from 0)
STEPS_TAG = "orch.steps_per_epoch"
PRECISION_TAG = "orch.precision"  # what a worker trained in, and why: "fp32 (auto: CPU without native bf16)"
LATEST_CHECKPOINT_TAG = "orch.latest_checkpoint"
STEP_CHECKPOINT_TAG = "orch.step_checkpoint"  # the latest checkpoint written within an epoch
BEST_CHECKPOINT_TAG = "orch.best_checkpoint"  # set when the run ends (orchestrator/recovery/best.py's rule)
RESTORED_FROM_TAG = "orch.restored_from"  # what the latest worker group was restored from
WORKERS_TAG = "workers"  # JSON: where each rank of the latest worker group runs
# what interrupted it (orchestrator/train/interruptions.py)
PREEMPTIONS_TAG = "orch.preemptions"
PREEMPTION_LOG_TAG = "orch.preemption_log"  # JSON: the latest preemptions
FAILURES_TAG = "orch.failures"
LAST_FAILURE_TAG = "orch.last_failure"
RESTARTS_TAG = "orch.restarts"
LAST_RESTART_CAUSE_TAG = "orch.last_restart_cause"
RESTORE_WARNING_TAG = "orch.restore_warning"  # a damaged checkpoint set aside (orchestrator/recovery/restart.py)
STOP_TAG = "orch.stop_request"  # `orch stop --save` asks the workers to save and stop (train/notices.py)
# resumes (orchestrator/targets/resume.py)
RESUMES_TAG = "orch.resumes"
RESUMED_FROM_TAG = "orch.resumed_from"
# what the dashboard shows besides (orchestrator/runs/run_record.py, model_logging.py)
RECORD_WARNING_TAG = "orch.record_warning"
MODEL_WARNING_TAG = "orch.model_warning"
MODEL_CHECKPOINT_TAG = "orch.checkpoint"  # on a logged model: the checkpoint it was made from

# --- the kinds of run that are not a job's (orch.kind; a job's run has none)
KIND_TAG = "orch.kind"
SWEEP, ENSEMBLE, REPORT = "sweep", "ensemble", "report"
# a sweep (orchestrator/sweep/records.py): the parent, and each trial a child run
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: its runs table nests a child under its parent
SWEEP_TRIALS_TAG = "orch.sweep.trials"  # on the parent: how many trials
SWEEP_VARIED_TAG = "orch.sweep.varied"  # on the parent: JSON list of the varied keys
BEST_TRIAL_TAG = "orch.sweep.best_trial"  # on the parent, by the report (orchestrator/report/publish.py)
REPORT_WARNING_TAG = "orch.report_warning"  # on the parent: why the sweep's report could not be made
TRIAL_TAG = "orch.sweep.trial"  # on a child: its trial's index
OVERRIDES_TAG = "orch.sweep.overrides"  # on a child: JSON of the keys its trial set
EARLY_STOPPED_TAG = "orch.sweep.early_stopped"  # on a child ASHA stopped
# an ensemble's run (orchestrator/evaluation/records.py), a report's run (orchestrator/report/publish.py)
ENSEMBLE_MEMBERS_TAG = "orch.ensemble.members"
ENSEMBLE_COMBINE_TAG = "orch.ensemble.combine"
REPORT_RUNS_TAG = "orch.report.runs"
EVAL_TAG_PREFIX = "orch.eval."  # + the TTA protocol: what `orch evaluate` logged to a run, and how

# --- step metrics: rank 0 logs them every few steps (orchestrator/train/step_metrics.py), step =
# the global step; the progress line reads them (orchestrator/console/terminal.py)
STEP_LOSS = "step/train_loss"
STEP_LR = "step/lr"
STEP_RATE = "step/images_per_second"


def is_sweep(run) -> bool:
    """Whether an MLflow run is a sweep's parent."""
    return run.data.tags.get(KIND_TAG) == SWEEP


def is_trial(run) -> bool:
    """Whether an MLflow run is a sweep's trial."""
    return TRIAL_TAG in run.data.tags
