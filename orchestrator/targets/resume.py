"""`orch resume RUN`: a new driver continues a run from its latest good checkpoint, in the
same MLflow run and the same checkpoint folder (so retention and Ray Train's own record of
the run carry on). It is also how a run whose driver or head node was lost goes on.

A run continues where it ran (its orch.target tag) unless --target or --address moves it: a
local run here, a Ray cluster's run as a new Ray job on that cluster, a Kubernetes run as a new
RayJob. The submitter of a remote resume may not see the checkpoint folder or the data, so it
checks what it can without them, reopens the run and submits a job whose entrypoint
(targets.entrypoint --resume) calls continue_here() on the cluster, as a local resume does here.
"""

import json
import tempfile

import click
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator import ray_internals
from orchestrator.console import terminal
from orchestrator.errors import OrchError, SpecError
from orchestrator.recovery.restart import RestartPoint, record_warning, restart_point
from orchestrator.runs import tracking
from orchestrator.runs.driver import ACTIVE, driver_alive, driver_tags
from orchestrator.runs.outcome import JobOutcome
from orchestrator.runs.run_lookup import find_run
from orchestrator.spec import preflight
from orchestrator.spec.load import parse_override, set_dotted, spec_from_dict
from orchestrator.tags import (
    CHECKPOINT_DIR_TAG,
    DRIVER_PID_TAG,
    EPOCH_TAG,
    EPOCHS_TAG,
    ERROR_TAG,
    JOB_TAGS,
    K8S_NAMESPACE_TAG,
    RAY_ADDRESS_TAG,
    RESUMED_FROM_TAG,
    RESUMES_TAG,
    STOP_TAG,
    TARGET_TAG,
    is_sweep,
)
from orchestrator.targets import cluster, jobs_address, kuberay, naming, ray_cluster
from orchestrator.targets import kuberay_manifest as manifest
from orchestrator.targets.local import drive
from orchestrator.train.checkpoint import (
    data_layout,
    is_step_checkpoint,
    layout_mismatch,
    list_checkpoints,
    load_meta,
    position_of,
)


def resume_run(
    ref: str,
    overrides=(),
    *,
    uri: str | None = None,
    target: str | None = None,
    address: str | None = None,
    namespace: str | None = None,
    image: str | None = None,
    detach: bool = False,
    progress_to_stderr: bool = False,
) -> JobOutcome:
    """Continue run `ref` to the (possibly raised) training.epochs, where it ran unless `target` or
    `address` says otherwise. Every check runs before the run is touched, so bad input leaves it
    as it was."""
    uri = tracking.tracking_uri(explicit=uri)
    tracking.quiet_mlflow()
    run = find_run(uri, ref)
    run_id = run.info.run_id
    if run.info.status == ACTIVE and driver_alive(run) is not False:
        raise OrchError(
            f"run {run_id} is still running (driver pid {run.data.tags.get(DRIVER_PID_TAG)}); "
            f"`orch stop {run_id}` first"
        )
    spec, original = run_spec(uri, run, overrides)
    check_resumable(original, spec)
    tags = run.data.tags
    target = target or ("ray" if address else tags.get(TARGET_TAG) or "local")
    if target == "ray":
        address = jobs_address(spec, address or tags.get(RAY_ADDRESS_TAG))
        return _resume_on_ray(uri, run, spec, overrides, address, detach, progress_to_stderr)
    if target == "k8s":
        namespace = namespace or tags.get(K8S_NAMESPACE_TAG) or spec.cluster.kubernetes.namespace
        return _resume_on_k8s(uri, run, spec, original, overrides, namespace, image, detach)
    return continue_here(uri, run, spec, overrides, progress_to_stderr=progress_to_stderr)


def sweep_parent(uri: str | None, ref: str):
    """(uri, run) when `ref` is a sweep's parent run (orch.kind=sweep), else None."""
    uri = tracking.tracking_uri(explicit=uri)
    tracking.quiet_mlflow()
    run = find_run(uri, ref)
    return (uri, run) if is_sweep(run) else None


def continue_here(
    uri: str, run, spec, overrides=(), *, reopen: bool = True, progress_to_stderr: bool = False
) -> JobOutcome:
    """Continue `run` on the Ray this process reaches, from the checkpoint pick_checkpoint()
    picks in its folder (which must be readable here): check the spec against that checkpoint,
    the data and the cluster, reopen the run (with `reopen`, a local resume; a remote one's
    submitter reopened it already), and train it to spec.training.epochs."""
    run_id = run.info.run_id
    run_dir = run.data.tags.get(CHECKPOINT_DIR_TAG)
    good = pick_checkpoint(uri, run_id, run_dir)
    meta = load_meta(good) if "://" not in good else None
    check_epochs_left(run_id, epochs_done(good), spec)
    if meta and is_step_checkpoint(good):
        tell_layout_change(uri, run_id, good, meta, spec)
    plan = preflight.plan(spec)
    if meta and plan["num_classes"] != meta["num_classes"]:
        raise SpecError(
            f"model.num_classes: the checkpoint has {meta['num_classes']} classes, this spec "
            f"{plan['num_classes']}; cannot resume (the data changed?)"
        )
    terminal.say(terminal.connecting())
    cluster.connect()
    cluster.check_resources(spec.scaling)
    if reopen:
        reopen_run(uri, run, spec, overrides, {TARGET_TAG: "local"}, good)
    tracking.set_tags(uri, run_id, {RESUMED_FROM_TAG: good, **driver_tags()})
    return drive(spec, uri, run_id, run_dir, resume_from=good, progress_to_stderr=progress_to_stderr)


def pick_checkpoint(uri: str, run_id: str, run_dir: str | None) -> str:
    """The checkpoint the run continues from, as orchestrator/recovery/restart.py chooses it for every
    path: the newest that verifies, an epoch's or a step's. Newer damaged ones are set aside (so
    neither Ray nor a later resume takes them), told and recorded on the run: the one change a
    resume makes before its other checks."""
    try:
        point = restart_point(run_dir) if run_dir else RestartPoint(None)
    except ray_internals.RayInternalChanged as exc:
        raise OrchError(str(exc)) from None
    if point.location is None:
        raise OrchError(
            f"run {run_id} has no checkpoint to resume from"
            + (f" ({len(point.damaged)} damaged in {run_dir})" if point.damaged else f" in {run_dir}")
        )
    if point.warning:
        click.echo(f"orch: warning: {point.warning}", err=True)
        record_warning(uri, run_id, point.warning)
    return point.location


def tell_layout_change(uri: str, run_id: str, step_checkpoint: str, meta: dict, spec) -> None:
    """Say (and record on the run) that the step checkpoint's epoch starts again, when the spec
    shards the data otherwise than the workers that wrote it (train/loop.py acts on the same test)."""
    mismatch = layout_mismatch(meta, data_layout(spec, spec.scaling.num_workers))
    if mismatch:
        warning = f"{step_checkpoint}: {mismatch}; epoch {meta['epoch']} starts again from its first batch"
        click.echo(f"orch: warning: {warning}", err=True)
        record_warning(uri, run_id, warning)


def epochs_done(checkpoint: str) -> int:
    """How many whole epochs a checkpoint holds: an end-of-epoch one its epoch and those before,
    a step checkpoint only those before the epoch it is within."""
    epoch, batches = position_of(checkpoint)
    return epoch + 1 if batches == float("inf") else epoch


def check_epochs_left(run_id: str, done: int, spec) -> None:
    """The run has trained `done` whole epochs; the spec must ask for more."""
    if done >= spec.training.epochs:
        raise SpecError(
            f"training.epochs: run {run_id} has trained {done} epochs, its spec asks for "
            f"{spec.training.epochs}; to train more: --set training.epochs={done + 1}"
        )


def relaunch_on_k8s(uri: str, run, pods, overrides, *, pod_uri: str, namespace: str, image: str, api) -> str:
    """Reopen a run whose checks passed and create its next RayJob, whose entrypoint continues
    it; returns the RayJob's name."""
    run_id = run.info.run_id
    check_epochs_left(run_id, logged_epoch(run) + 1, pods)
    resume = _next_resume(run)
    name = manifest.rayjob_name(pods.name, run_id, resume)
    reopen_run(uri, run, pods, overrides, kuberay.job_tags(namespace, name))
    kuberay.launch(
        pods, None, uri=uri, pod_uri=pod_uri, namespace=namespace, image=image, api=api, run_id=run_id, resume=resume
    )
    return name


def logged_epoch(run) -> int:
    """The last epoch the run logged (orch.epoch): what a submitter that cannot read the
    checkpoint folder knows of how far the run got."""
    epoch = run.data.tags.get(EPOCH_TAG)
    if epoch is None:
        raise OrchError(
            f"run {run.info.run_id} logged no epoch, so it has no checkpoint to resume from; submit the job again"
        )
    return int(epoch)


def _resume_on_ray(uri: str, run, spec, overrides, address: str, detach: bool, progress_to_stderr: bool):
    """The cluster's checks (as `orch submit --address` makes them), then the run reopened and
    continued by a new Ray job."""
    address, uri = ray_cluster.check_cluster(spec, address, uri)
    run_id = run.info.run_id
    check_epochs_left(run_id, logged_epoch(run) + 1, spec)
    jobs = ray_cluster.client(address)
    resume = _next_resume(run)
    reopen_run(uri, run, spec, overrides, ray_cluster.job_tags(address, naming.ray_job_id(spec, run_id, resume)))
    job_id = ray_cluster.submit_job(jobs, spec, uri, run_id, address, resume=resume)
    return ray_cluster.settle(jobs, job_id, spec, uri, run_id, detach=detach, progress_to_stderr=progress_to_stderr)


def _resume_on_k8s(uri: str, run, spec, original: dict, overrides, namespace: str, image: str | None, detach: bool):
    """The checks `orch submit --target k8s` makes (and that the pods see the same checkpoint
    folder), then the run reopened and continued by a new RayJob."""
    pods, pod_uri, namespace = kuberay.prepare(spec, uri, namespace)
    check_resumable(original, pods)
    image = image or spec.cluster.kubernetes.image
    kuberay.check_launchable(uri, namespace, image)
    api = kuberay.api_client()
    name = relaunch_on_k8s(uri, run, pods, overrides, pod_uri=pod_uri, namespace=namespace, image=image, api=api)
    return kuberay.settle(api, namespace, name, uri=uri, run_id=run.info.run_id, detach=detach)


def run_spec(uri: str, run, overrides=()):
    """The run's spec (its spec.json artifact, else the latest checkpoint's meta.json) with
    `--set` overrides applied, and the original for comparison."""
    original = _spec_artifact(uri, run.info.run_id)
    if original is None:
        locations = list_checkpoints(run.data.tags.get(CHECKPOINT_DIR_TAG, ""))
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


def _next_resume(run) -> int:
    """The number the run's next resume gets (its orch.resumes tag counts those before)."""
    return int(run.data.tags.get(RESUMES_TAG, "0")) + 1


def reopen_run(uri: str, run, spec, overrides, job: dict, good: str | None = None) -> None:
    """Mark the run RUNNING for its next resume: the new spec, tags naming the job it continues
    as (`job`: orch.target and that target's tags; another target's are dropped), and
    resumes/resume_N.json: the overrides, the previous job, the new one, and the checkpoint it
    continues from when that is chosen here (`good`)."""
    client = MlflowClient(uri)
    run_id, tags = run.info.run_id, run.data.tags
    resumes = _next_resume(run)
    previous = {key: tags[key] for key in JOB_TAGS if key in tags}
    record = {"overrides": list(overrides), "previous_job": previous, "job": job, **({"from": good} if good else {})}
    client.update_run(run_id, status=ACTIVE)
    client.log_dict(run_id, spec.model_dump(mode="json"), "spec.json")
    client.log_dict(run_id, record, f"resumes/resume_{resumes}.json")
    # The last attempt's error (this one records its own), a stop request it carried out, and
    # the tags of a job elsewhere.
    for key in [ERROR_TAG, STOP_TAG, *(key for key in previous if key not in job)]:
        if key in tags:
            client.delete_tag(run_id, key)
    new = {RESUMES_TAG: resumes, **job}
    if spec.training.epochs != int(run.data.params.get("training.epochs", spec.training.epochs)):
        new[EPOCHS_TAG] = spec.training.epochs  # params are immutable in MLflow; the new target
    tracking.set_tags(uri, run_id, new)
