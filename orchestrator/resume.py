"""`orch resume RUN`: a new driver continues a run from its latest good checkpoint, in the
same MLflow run and the same checkpoint folder (so retention and Ray Train's own record of
the run carry on). It is also how a run whose driver or head node was lost goes on.
"""

import json

import click
import pyarrow.fs as pafs
from mlflow.tracking import MlflowClient

from orchestrator import cluster, preflight, runs, tracking
from orchestrator.errors import OrchError, SpecError
from orchestrator.targets.local import drive, driver_tags
from orchestrator.train.checkpoint import latest_good, load_meta

RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's checkpoints


def resume_run(ref: str, overrides=(), *, uri: str | None = None, progress_to_stderr: bool = False) -> dict:
    """Continue run `ref` to the (possibly raised) training.epochs. Every check runs before the
    run is touched, so bad input leaves it as it was."""
    uri = tracking.tracking_uri(explicit=uri)
    tracking.quiet_mlflow()
    run = runs.find_run(uri, ref)
    run_id = run.info.run_id
    if run.info.status == runs.ACTIVE and runs.driver_alive(run) is not False:
        raise OrchError(f"run {run_id} is still running (driver pid {run.data.tags.get('orch.driver_pid')}); "
                        f"`orch stop {run_id}` first")
    spec, original = runs.run_spec(uri, run, overrides)
    runs.check_resumable(original, spec)
    run_dir = run.data.tags.get("orch.checkpoint_dir")
    good, damaged = latest_good(run_dir) if run_dir else (None, [])
    if good is None:
        raise OrchError(f"run {run_id} has no checkpoint to resume from"
                        + (f" ({len(damaged)} damaged in {run_dir})" if damaged else f" in {run_dir}"))
    meta = load_meta(good) if "://" not in good else None
    epoch = meta["epoch"] if meta else int(good.rsplit("_", 1)[-1])
    if epoch + 1 >= spec.training.epochs:
        raise SpecError(f"training.epochs: run {run_id} has trained {epoch + 1} epochs, its spec asks for "
                        f"{spec.training.epochs}; to train more: --set training.epochs={epoch + 2}")
    plan = preflight.plan(spec)
    if meta and plan["num_classes"] != meta["num_classes"]:
        raise SpecError(f"model.num_classes: the checkpoint has {meta['num_classes']} classes, this spec "
                        f"{plan['num_classes']}; cannot resume (the data changed?)")
    cluster.connect()
    cluster.check_resources(spec.scaling)
    for location, why in damaged:
        click.echo(f"orch: warning: checkpoint {location} is damaged ({why}); resuming from {good}", err=True)
    set_aside(run_dir, [location for location, _ in damaged])
    _reopen(uri, run, spec, overrides, good)
    return drive(spec, uri, run_id, run_dir, resume_from=good, progress_to_stderr=progress_to_stderr)


def set_aside(run_dir: str, damaged: list[str]) -> None:
    """Rename damaged checkpoints to NAME.damaged and drop them from Ray Train's snapshot, so
    Ray neither hands them to the workers nor later deletes a good checkpoint of the same name."""
    if not damaged:
        return
    fs, root = _fs(run_dir)
    names = {location.rstrip("/").rsplit("/", 1)[-1] for location in damaged}
    for name in names:
        fs.move(f"{root}/{name}", f"{root}/{name}.damaged")
    snapshot_path = f"{root}/{RAY_SNAPSHOT}"
    try:
        with fs.open_input_stream(snapshot_path) as f:
            snapshot = json.loads(f.read().decode())
    except (OSError, ValueError):
        return
    _drop_from_snapshot(snapshot, names)
    with fs.open_output_stream(snapshot_path) as f:
        f.write(json.dumps(snapshot).encode())


def _drop_from_snapshot(snapshot: dict, names: set[str]) -> None:
    kept = [(r, i) for r, i in zip(snapshot["checkpoint_results"], snapshot["checkpoint_report_indices"])
            if r["checkpoint_dir_name"] not in names]
    snapshot["checkpoint_results"] = [r for r, _ in kept]
    snapshot["checkpoint_report_indices"] = [i for _, i in kept]
    pending = [(r, v) for r, v in zip(snapshot.get("pending_training_results", []),
                                     snapshot.get("pending_validation_specs", []))
               if r["checkpoint_dir_name"] not in names]
    snapshot["pending_training_results"] = [r for r, _ in pending]
    snapshot["pending_validation_specs"] = [v for _, v in pending]
    latest = snapshot.get("latest_checkpoint_result")
    if latest and latest["checkpoint_dir_name"] in names:
        # The newest surviving report (by index) becomes the latest one Ray hands to workers.
        snapshot["latest_checkpoint_result"] = max(kept, key=lambda p: p[1])[0] if kept else None


def _reopen(uri: str, run, spec, overrides, good: str) -> None:
    client = MlflowClient(uri)
    run_id = run.info.run_id
    resumes = int(run.data.tags.get("orch.resumes", "0")) + 1
    client.update_run(run_id, status=runs.ACTIVE)
    client.log_dict(run_id, spec.model_dump(mode="json"), "spec.json")
    client.log_dict(run_id, {"overrides": list(overrides), "from": good}, f"resumes/resume_{resumes}.json")
    if "orch.error" in run.data.tags:  # the last attempt's; this one records its own
        client.delete_tag(run_id, "orch.error")
    tags = {"orch.resumes": resumes, "orch.resumed_from": good, **driver_tags()}
    if spec.training.epochs != int(run.data.params.get("training.epochs", spec.training.epochs)):
        tags["orch.epochs"] = spec.training.epochs  # params are immutable in MLflow; the new target
    tracking.set_tags(uri, run_id, tags)


def _fs(location: str):
    if "://" not in location:
        return pafs.LocalFileSystem(), location.rstrip("/")
    return pafs.FileSystem.from_uri(location)
