"""A sweep on Kubernetes (`orch sweep --target k8s`): one KubeRay RayJob runs the whole sweep.

The submitter checks every trial as `orch submit --target k8s` checks a job (its spec as the
pods see it: paths on the data volume, their MLflow URI; its model; that its workers fit the
pods), and the image and store; then it creates the parent run with the trials in that pod view
(sweep/trials.json, which the RayJob's entrypoint reads) and the RayJob, whose entrypoint
`python -m orchestrator.sweep.entrypoint --parent-run-id P --tracking-uri URI` runs the trials
on its own Ray cluster's Tune (sweep.driver.drive_sweep, as a local sweep does). That cluster is
made for the sweep: `max_concurrent_trials` (1 when unset) of its largest trial at once.

The parent's tags name the RayJob (orch.target=k8s, orch.k8s_namespace, orch.rayjob) and its
image (orch.k8s_image), so `orch status/logs/stop PARENT` reach it and `orch resume PARENT`
creates the next one (-rN) for the trials that did not finish.
"""

import os
from dataclasses import dataclass

from orchestrator.console import terminal
from orchestrator.errors import JobFailed, OrchError, SpecError
from orchestrator.runs import tracking
from orchestrator.spec.schema import JobSpec
from orchestrator.sweep import records
from orchestrator.sweep.spec import SweepSpec
from orchestrator.sweep.trials import Trial, resources
from orchestrator.tags import K8S_IMAGE_TAG, K8S_NAMESPACE_TAG, TARGET_TAG
from orchestrator.targets import kuberay, naming
from orchestrator.targets import kuberay_manifest as manifest

DEFAULT_CONCURRENCY = 1  # max_concurrent_trials when a k8s sweep does not say


@dataclass(frozen=True)
class KubeSweep:
    """A sweep as its RayJob runs it."""

    sweep: SweepSpec  # max_concurrent_trials resolved
    trials: list[Trial]  # each trial's spec as the pods see it
    uri: str  # the MLflow store as this process reaches it
    pod_uri: str  # ... and as the pods do
    namespace: str
    image: str | None


def prepare(sweep: SweepSpec, trials: list[Trial], uri: str, namespace=None, image=None) -> KubeSweep:
    """Each trial's spec as the pods see it (kuberay.prepare checks its model and the
    namespace), checked against the worker pods' layout."""
    k8s = trials[0].spec.cluster.kubernetes
    namespace, pods, pod_uris = namespace or k8s.namespace, [], set()
    for trial in trials:
        spec, pod_uri, namespace = kuberay.prepare(trial.spec, uri, namespace)
        try:
            manifest.worker_layout(spec.scaling, spec.cluster.kubernetes.gpus_per_node)
        except SpecError as exc:
            raise SpecError(f"trial {trial.index} ({trial.label}): {exc}") from None
        pods.append(Trial(trial.index, trial.overrides, spec))
        pod_uris.add(pod_uri)
    if len(pod_uris) > 1:
        raise SpecError(
            f"cluster.kubernetes.tracking_uri: the trials' pods would reach MLflow at {', '.join(sorted(pod_uris))}; "
            "one RayJob runs every trial, so they must share one"
        )
    resolved = sweep.model_copy(update={"max_concurrent_trials": sweep.max_concurrent_trials or DEFAULT_CONCURRENCY})
    return KubeSweep(resolved, pods, uri, pod_uri, namespace, image or k8s.image)


def recorded(uri: str, parent, sweep: SweepSpec, trials: list[Trial]) -> KubeSweep:
    """The KubeSweep a parent run recorded (its trials are in pod view already)."""
    tags, k8s = parent.data.tags, trials[0].spec.cluster.kubernetes
    return KubeSweep(
        sweep.model_copy(update={"max_concurrent_trials": sweep.max_concurrent_trials or DEFAULT_CONCURRENCY}),
        trials,
        uri,
        trials[0].spec.tracking.tracking_uri,
        tags.get(K8S_NAMESPACE_TAG) or k8s.namespace,
        tags.get(K8S_IMAGE_TAG) or k8s.image,
    )


def cluster_spec(job: KubeSweep, running: int) -> JobSpec:
    """The RayJob's Ray cluster, as one job's spec: the largest trial's, named for the sweep,
    with the workers of `running` trials at once (so worker_layout gives the pods). A
    STRICT_PACK trial's workers share a pod: then a pod of a trial's size per trial."""
    largest = max(job.trials, key=lambda t: _size(resources(t.spec)))
    spec = largest.spec.model_copy(deep=True)
    spec.name = f"{job.trials[0].spec.name}-sweep"
    scaling = spec.scaling
    if scaling.placement == "STRICT_PACK":
        spec.scaling = scaling.model_copy(
            update={
                "num_workers": running,
                "placement": "STRICT_SPREAD",
                "gpus_per_worker": scaling.gpus_per_worker * scaling.num_workers,
                "cpus_per_worker": scaling.cpus_per_worker * scaling.num_workers,
            }
        )
    else:
        spec.scaling = scaling.model_copy(update={"num_workers": scaling.num_workers * running})
    return spec


def rayjob(job: KubeSweep, parent_id: str, image: str, *, pending: int, resume: int = 0) -> dict:
    """The sweep's RayJob (its `resume`-th), its cluster made for the trials that run at once
    (max_concurrent_trials, or the `pending` trials when fewer)."""
    running = min(job.sweep.max_concurrent_trials, pending)
    return manifest.rayjob_manifest(
        cluster_spec(job, running),
        run_id=parent_id,
        image=image,
        tracking_uri=job.pod_uri,
        namespace=job.namespace,
        resume=resume,
        command=naming.sweep_command(parent_id, job.pod_uri),
    )


def dry_run(sweep: SweepSpec, trials: list[Trial], *, uri=None, namespace=None, image=None) -> tuple[SweepSpec, dict]:
    """The sweep (max_concurrent_trials resolved) and the RayJob a submission would create, with
    placeholders for the parent run id and a missing image; nothing is created."""
    job = prepare(sweep, trials, tracking.tracking_uri(trials[0].spec, uri), namespace, image)
    if not job.image:
        terminal.say(
            "warning: cluster.kubernetes.image: no training image; the manifest says "
            f"{manifest.PLACEHOLDER_IMAGE} (pass --image)"
        )
    body = rayjob(job, manifest.PLACEHOLDER_RUN_ID, job.image or manifest.PLACEHOLDER_IMAGE, pending=len(trials))
    return job.sweep, body


def submit(
    sweep: SweepSpec,
    trials: list[Trial],
    path,
    *,
    uri=None,
    namespace=None,
    image=None,
    detach=False,
    api=None,
    poll_s=5.0,
) -> dict:
    """Check, create the parent run and the RayJob, and unless `detach` follow it to its end:
    records.outcome() of the parent."""
    job = prepare(sweep, trials, tracking.tracking_uri(trials[0].spec, uri), namespace, image)
    kuberay.check_launchable(job.uri, job.namespace, job.image)
    api = api or kuberay.api_client()
    tags = {TARGET_TAG: "k8s", K8S_NAMESPACE_TAG: job.namespace, K8S_IMAGE_TAG: job.image}
    parent_id = records.create_parent(job.uri, job.sweep, job.trials, os.path.abspath(path), tags)
    terminal.say(f"sweep {parent_id}: {len(trials)} trials")
    name = launch(api, job, parent_id, pending=len(trials))
    if detach:
        return records.outcome(job.uri, parent_id, job.trials)
    return follow(api, job, parent_id, name, poll_s=poll_s)


def resume(uri: str, parent, sweep: SweepSpec, trials: list[Trial], left: list[int], *, api=None, poll_s=5.0) -> dict:
    """`orch resume PARENT` of a k8s sweep: reopen the parent and create its next RayJob (-rN),
    whose entrypoint runs the trials `left`; follow it to its end."""
    job = recorded(uri, parent, sweep, trials)
    kuberay.check_launchable(uri, job.namespace, job.image)
    api = api or kuberay.api_client()
    parent_id = parent.info.run_id
    resumes = records.reopen(uri, parent, {})
    terminal.say(f"sweep {parent_id}: resuming {len(left)} of {len(trials)} trials")
    name = launch(api, job, parent_id, pending=len(left), resume=resumes)
    return follow(api, job, parent_id, name, poll_s=poll_s)


def launch(api, job: KubeSweep, parent_id: str, *, pending: int, resume: int = 0) -> str:
    """Name the RayJob on the parent and create it; one the API refuses ends the parent FAILED."""
    body = rayjob(job, parent_id, job.image, pending=pending, resume=resume)
    name = body["metadata"]["name"]
    tracking.set_tags(job.uri, parent_id, kuberay.job_tags(job.namespace, name))
    try:
        kuberay.create(api, body, uri=job.uri, run_id=parent_id)
    except OrchError as exc:
        raise JobFailed(f"sweep {parent_id} FAILED: {exc}") from None
    running = min(job.sweep.max_concurrent_trials, pending)
    terminal.say(
        f"sweep {parent_id}: RayJob {job.namespace}/{name} created, its Ray cluster made for {running} "
        f"trial{'s' if running > 1 else ''} at once (orch status/logs/stop {parent_id}; "
        f"kubectl -n {job.namespace} get rayjob {name})"
    )
    return name


def follow(api, job: KubeSweep, parent_id: str, name: str, *, poll_s: float = 5.0) -> dict:
    """Each change of the RayJob's status until it ends; then the parent (and children left
    RUNNING) ended if its entrypoint could not. Ctrl-C stops following only: the sweep runs on."""
    try:
        state = kuberay.wait(api, job.namespace, name, poll_s=poll_s)
    except KeyboardInterrupt:
        terminal.say(f"stopped following; RayJob {job.namespace}/{name} runs on (orch stop {parent_id} ends it)")
        return records.outcome(job.uri, parent_id, job.trials)
    status, cause = kuberay.ended_as(state)
    why = f"the sweep's RayJob {name} ended: {cause}"
    records.end_running_children(job.uri, parent_id, "KILLED", why)
    tracking.end_if_running(job.uri, parent_id, status, None if status == "FINISHED" else why)
    return records.settled(job.uri, parent_id, job.trials)


def _size(need: dict) -> tuple:
    return need.get("GPU", 0), need.get("CPU", 0)
