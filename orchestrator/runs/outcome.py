"""What a job came to, in one shape for every target (the local Ray, a Ray cluster, Kubernetes):
read back from the job's MLflow run, so that what `orch submit` and `orch resume` print is what
the run recorded, wherever it trained."""

from dataclasses import asdict, dataclass

from mlflow.tracking import MlflowClient

from orchestrator.runs.tracking import BEST_METRICS, EPOCH_METRICS
from orchestrator.tags import BEST_CHECKPOINT_TAG, EPOCH_TAG, EPOCHS_TAG

SHOWN_METRICS = ("epoch",) + EPOCH_METRICS + tuple(f"best_{key}" for key in BEST_METRICS)


@dataclass(frozen=True)
class JobOutcome:
    run_id: str
    status: str  # FINISHED, FAILED, KILLED; SUBMITTED or RUNNING for a detached job
    metrics: dict  # the last epoch's metrics, the best_* ones and `epoch` (counted from 0)
    best_checkpoint: str | None
    tracking_uri: str
    epochs: int | None = None  # the epochs the run trains to (training.epochs, raised by a resume)

    def as_json(self) -> dict:
        """What `--output json` prints."""
        shown = asdict(self)
        shown.pop("tracking_uri")
        shown.pop("epochs")
        return shown


def read_outcome(uri: str, run_id: str, status: str | None = None) -> JobOutcome:
    """The run as MLflow has it; `status` overrides its status (a detached job not started yet)."""
    run = MlflowClient(uri).get_run(run_id)
    tags = run.data.tags
    metrics = {key: value for key, value in run.data.metrics.items() if key in SHOWN_METRICS}
    if EPOCH_TAG in tags:
        metrics["epoch"] = int(tags[EPOCH_TAG])
    return JobOutcome(
        run_id=run_id,
        status=status or run.info.status,
        metrics=metrics,
        best_checkpoint=tags.get(BEST_CHECKPOINT_TAG),
        tracking_uri=uri,
        epochs=planned_epochs(run),
    )


def ended_with_job(job_status) -> str:
    """The status of a run whose Ray job ended without ending it (its entrypoint died, or never
    ran): KILLED when the job was stopped (`ray job stop`, `orch stop`, Ctrl-C), else FAILED."""
    return "KILLED" if str(job_status) == "STOPPED" else "FAILED"


def planned_epochs(run) -> int | None:
    """The epochs the run trains to: its spec's training.epochs, or what a resume raised it to."""
    epochs = run.data.tags.get(EPOCHS_TAG) or run.data.params.get("training.epochs")
    return int(epochs) if epochs and epochs.isdigit() else None
