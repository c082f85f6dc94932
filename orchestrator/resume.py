"""`orch resume RUN`: a new driver continues a run from its latest good checkpoint, in the
same MLflow run and the same checkpoint folder (so retention and Ray Train's own record of
the run carry on). It is also how a run whose driver or head node was lost goes on.
"""

import json
import tempfile

import click
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator import cluster, preflight, ray_internals, tracking
from orchestrator.errors import OrchError, SpecError
from orchestrator.lifecycle import ACTIVE, driver_alive, driver_tags
from orchestrator.outcome import JobOutcome
from orchestrator.run_lookup import find_run
from orchestrator.spec.load import parse_override, set_dotted, spec_from_dict
from orchestrator.targets.local import drive
from orchestrator.train.checkpoint import latest_good, list_checkpoints, load_meta, open_location


def resume_run(ref: str, overrides=(), *, uri: str | None = None, progress_to_stderr: bool = False) -> JobOutcome:
    """Continue run `ref` to the (possibly raised) training.epochs. Every check runs before the
    run is touched, so bad input leaves it as it was."""
    uri = tracking.tracking_uri(explicit=uri)
    tracking.quiet_mlflow()
    run = find_run(uri, ref)
    run_id = run.info.run_id
    if run.info.status == ACTIVE and driver_alive(run) is not False:
        raise OrchError(
            f"run {run_id} is still running (driver pid {run.data.tags.get('orch.driver_pid')}); "
            f"`orch stop {run_id}` first"
        )
    spec, original = run_spec(uri, run, overrides)
    check_resumable(original, spec)
    run_dir = run.data.tags.get("orch.checkpoint_dir")
    good, damaged = latest_good(run_dir) if run_dir else (None, [])
    if good is None:
        raise OrchError(
            f"run {run_id} has no checkpoint to resume from"
            + (f" ({len(damaged)} damaged in {run_dir})" if damaged else f" in {run_dir}")
        )
    meta = load_meta(good) if "://" not in good else None
    epoch = meta["epoch"] if meta else int(good.rsplit("_", 1)[-1])
    if epoch + 1 >= spec.training.epochs:
        raise SpecError(
            f"training.epochs: run {run_id} has trained {epoch + 1} epochs, its spec asks for "
            f"{spec.training.epochs}; to train more: --set training.epochs={epoch + 2}"
        )
    plan = preflight.plan(spec)
    if meta and plan["num_classes"] != meta["num_classes"]:
        raise SpecError(
            f"model.num_classes: the checkpoint has {meta['num_classes']} classes, this spec "
            f"{plan['num_classes']}; cannot resume (the data changed?)"
        )
    cluster.connect()
    cluster.check_resources(spec.scaling)
    for location, why in damaged:
        click.echo(f"orch: warning: checkpoint {location} is damaged ({why}); resuming from {good}", err=True)
    set_aside(run_dir, [location for location, _ in damaged])
    _reopen(uri, run, spec, overrides, good)
    return drive(spec, uri, run_id, run_dir, resume_from=good, progress_to_stderr=progress_to_stderr)


def set_aside(run_dir: str, damaged: list[str]) -> None:
    """Rename damaged checkpoints to NAME.damaged and drop them from Ray Train's checkpoint
    record, so Ray neither hands them to the workers nor later deletes a good checkpoint of
    the same name."""
    if not damaged:
        return
    fs, root = open_location(run_dir)
    names = {location.rstrip("/").rsplit("/", 1)[-1] for location in damaged}
    for name in names:
        fs.move(f"{root}/{name}", f"{root}/{name}.damaged")
    record_path = f"{root}/{ray_internals.CHECKPOINT_RECORD}"
    try:
        with fs.open_input_stream(record_path) as f:
            record = json.loads(f.read().decode())
    except (OSError, ValueError):
        return  # no record yet: Ray wrote none before the first checkpoint
    try:
        record = ray_internals.drop_from_checkpoint_record(record, names)
    except ray_internals.RayInternalChanged as exc:
        raise OrchError(str(exc)) from None
    with fs.open_output_stream(record_path) as f:
        f.write(json.dumps(record).encode())


def run_spec(uri: str, run, overrides=()):
    """The run's spec (its spec.json artifact, else the latest checkpoint's meta.json) with
    `--set` overrides applied, and the original for comparison."""
    original = _spec_artifact(uri, run.info.run_id)
    if original is None:
        locations = list_checkpoints(run.data.tags.get("orch.checkpoint_dir", ""))
        if not locations:
            raise OrchError(
                f"run {run.info.run_id}: neither a spec.json artifact nor a checkpoint to read its spec from"
            )
        original = load_meta(locations[-1])["spec"]
    raw = json.loads(json.dumps(original))
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(raw, key, value)
    return spec_from_dict(raw, source=f"run {run.info.run_id} spec"), original


def check_resumable(original: dict, new) -> None:
    """Changes that would not load into the checkpoint's model (or move its folder) are errors."""
    before, after = original, new.model_dump(mode="json")
    for section, field in (
        ("model", "arch"),
        ("model", "num_classes"),
        ("model", "options"),
        ("checkpoint", "storage"),
    ):
        old, now = before.get(section, {}).get(field), after[section][field]
        if old != now:
            raise SpecError(
                f"{section}.{field}: cannot change on resume ({old!r} -> {now!r}); submit a new job instead"
            )


def _spec_artifact(uri: str, run_id: str) -> dict | None:
    with tempfile.TemporaryDirectory(prefix="orch-spec-") as tmp:
        try:
            path = MlflowClient(uri).download_artifacts(run_id, "spec.json", dst_path=tmp)
            return json.loads(open(path).read())
        except (MlflowException, OSError, ValueError):
            return None


def _reopen(uri: str, run, spec, overrides, good: str) -> None:
    client = MlflowClient(uri)
    run_id = run.info.run_id
    resumes = int(run.data.tags.get("orch.resumes", "0")) + 1
    client.update_run(run_id, status=ACTIVE)
    client.log_dict(run_id, spec.model_dump(mode="json"), "spec.json")
    client.log_dict(run_id, {"overrides": list(overrides), "from": good}, f"resumes/resume_{resumes}.json")
    if "orch.error" in run.data.tags:  # the last attempt's; this one records its own
        client.delete_tag(run_id, "orch.error")
    tags = {"orch.resumes": resumes, "orch.resumed_from": good, **driver_tags()}
    if spec.training.epochs != int(run.data.params.get("training.epochs", spec.training.epochs)):
        tags["orch.epochs"] = spec.training.epochs  # params are immutable in MLflow; the new target
    tracking.set_tags(uri, run_id, tags)
