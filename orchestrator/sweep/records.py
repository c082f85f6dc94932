"""What a sweep leaves in MLflow: one parent run and one child run per trial that started.

Parent: tags orch.kind=sweep, orch.sweep.trials (how many), orch.sweep.varied (JSON list of the
varied keys), orch.target and the driver's tags; artifacts sweep/sweep.json (the sweep file as
resolved) and sweep/trials.json (each trial's index, overrides and resolved spec). Child: an
ordinary orch run (params, checkpoints, metrics) with tags mlflow.parentRunId (MLflow's run
table nests it), orch.sweep.trial (its index) and orch.sweep.overrides (JSON of its varied keys).
"""

import json
import tempfile

from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from orchestrator.errors import JobFailed, JobInterrupted, OrchError, last_line
from orchestrator.runs import tracking
from orchestrator.runs.driver import ACTIVE
from orchestrator.sweep.spec import SweepSpec
from orchestrator.sweep.trials import Trial, from_json
from orchestrator.tags import (
    ERROR_TAG,
    KIND_TAG,
    OVERRIDES_TAG,
    PARENT_TAG,
    RESUMES_TAG,
    SPEC_FILE_TAG,
    STOP_TAG,
    SWEEP,
    SWEEP_TRIALS_TAG,
    SWEEP_VARIED_TAG,
    TRIAL_TAG,
)

RESULT_KEYS = ("val_top1_error", "val_top5_error", "train_top1_error", "train_top5_error", "train_loss")
RESULT_KEYS += ("best_val_top1_error", "best_val_top5_error", "best_epoch")


def create_parent(uri: str, sweep: SweepSpec, trials: list[Trial], sweep_file: str, tags: dict) -> str:
    """The sweep's RUNNING parent run, in the experiment of its job, with the trials it runs."""
    tracking.quiet_mlflow()
    client = MlflowClient(uri)
    job = trials[0].spec
    name = sweep.name or f"{job.name}-sweep"
    run = client.create_run(tracking.experiment_id(client, job.experiment), run_name=name)
    run_id = run.info.run_id
    varied = list(dict.fromkeys(key for trial in trials for key in trial.overrides))
    tracking.set_tags(
        uri,
        run_id,
        {
            KIND_TAG: SWEEP,
            SWEEP_TRIALS_TAG: len(trials),
            SWEEP_VARIED_TAG: json.dumps(varied),
            SPEC_FILE_TAG: sweep_file,
            MLFLOW_RUN_NOTE: f"Sweep of {len(trials)} trials of {job.name} over {', '.join(varied)}.",
            **tags,
        },
    )
    client.log_dict(run_id, sweep.model_dump(mode="json"), "sweep/sweep.json")
    client.log_dict(run_id, [t.as_json() for t in trials], "sweep/trials.json")
    return run_id


def recorded_trials(uri: str, parent_id: str) -> list[Trial]:
    return from_json(artifact_json(uri, parent_id, "sweep/trials.json"))


def artifact_json(uri: str, parent_id: str, path: str):
    """A JSON artifact the sweep logged on its parent run."""
    with tempfile.TemporaryDirectory(prefix="orch-sweep-") as tmp:
        try:
            return json.loads(open(MlflowClient(uri).download_artifacts(parent_id, path, dst_path=tmp)).read())
        except Exception:
            raise OrchError(f"run {parent_id}: no {path} artifact: not a sweep's parent run") from None


def trial_runs(uri: str, parent_id: str) -> dict[int, list]:
    """{trial index: its child runs, oldest first}, in trial order. The one definition of the
    sweep's trials: a trial is its newest run (children()); older runs of it, were there any,
    were superseded by it. Runs of the parent without a trial index are not trials."""
    client = MlflowClient(uri)
    parent = client.get_run(parent_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        f"tags.`{PARENT_TAG}` = '{parent_id}'",
        max_results=5000,
        order_by=["start_time ASC"],
    )
    found: dict[int, list] = {}
    for run in runs:
        index = run.data.tags.get(TRIAL_TAG, "")
        if index.isdigit():
            found.setdefault(int(index), []).append(run)
    return dict(sorted(found.items()))


def children(uri: str, parent_id: str) -> dict[int, object]:
    """{trial index: the trial's run}: its newest (trial_runs)."""
    return {index: runs[-1] for index, runs in trial_runs(uri, parent_id).items()}


def create_child(uri: str, parent_id: str, trial: Trial) -> str:
    """The trial's RUNNING child run: an orch run of its spec, nested under the parent."""
    run_id = tracking.start_run(trial.spec, None, uri)
    client = MlflowClient(uri)
    client.update_run(run_id, name=trial.label or trial.spec.name)
    tracking.set_tags(
        uri, run_id, {PARENT_TAG: parent_id, TRIAL_TAG: trial.index, OVERRIDES_TAG: json.dumps(trial.overrides)}
    )
    return run_id


def end_running_children(uri: str, parent_id: str, status: str, why: str) -> list[str]:
    """End every child still RUNNING (its trial was stopped): the ids ended."""
    ended = [r.info.run_id for r in children(uri, parent_id).values() if r.info.status == "RUNNING"]
    for run_id in ended:
        tracking.end_run(uri, run_id, status, why)
    return ended


def reopen(uri: str, parent, tags: dict) -> int:
    """Mark a stopped sweep's parent RUNNING again, its last error and a stop request it carried
    out cleared, with `tags`; returns the number of this resume (orch.resumes counts them)."""
    parent_id = parent.info.run_id
    client = MlflowClient(uri)
    client.update_run(parent_id, status=ACTIVE)
    for key in (ERROR_TAG, STOP_TAG):
        if key in parent.data.tags:
            client.delete_tag(parent_id, key)
    resumes = int(parent.data.tags.get(RESUMES_TAG, "0")) + 1
    tracking.set_tags(uri, parent_id, {RESUMES_TAG: resumes, **tags})
    return resumes


def outcome(uri: str, parent_id: str, trials: list[Trial]) -> dict:
    """{"parent_run_id", "status", "trials": [{"index", "run_id", "status", "overrides", "metrics"}]}."""
    runs = children(uri, parent_id)
    rows = []
    for trial in trials:
        run = runs.get(trial.index)
        metrics = {k: run.data.metrics[k] for k in RESULT_KEYS if run and k in run.data.metrics}
        rows.append(
            {
                "index": trial.index,
                "run_id": run.info.run_id if run else None,
                "status": run.info.status if run else "NOT_STARTED",
                "overrides": trial.overrides,
                "metrics": metrics,
            }
        )
    status = MlflowClient(uri).get_run(parent_id).info.status
    return {"parent_run_id": parent_id, "status": status, "trials": rows}


def settled(uri: str, parent_id: str, trials: list[Trial]) -> dict:
    """The outcome() of a sweep a cluster job ran, once it ended; a KILLED parent raises
    JobInterrupted, any other end but FINISHED JobFailed with the parent's recorded error."""
    result = outcome(uri, parent_id, trials)
    if result["status"] == "KILLED":
        raise JobInterrupted(f"sweep {parent_id} stopped; `orch resume {parent_id}` runs the trials left")
    if result["status"] != "FINISHED":
        error = MlflowClient(uri).get_run(parent_id).data.tags.get(ERROR_TAG, "")
        raise JobFailed(f"sweep {parent_id} {result['status']}: {last_line(error, 'no cause recorded')}")
    return result
