"""Run a job on Kubernetes as a KubeRay RayJob, and follow, read and stop it.

`orch submit --target k8s` creates the MLflow run here, then a RayJob whose head runs
`python -m orchestrator.targets.entrypoint`, which attaches to that run; `orch resume` reopens
a run and creates a new RayJob (its name suffixed -rN) whose entrypoint continues it. Status
comes from the RayJob (`jobStatus`, `jobDeploymentStatus`), never from pod exit codes. Every
function takes `api` (a kubernetes ApiClient) so tests can point it at a local HTTP server.
"""

import json
import re
import sys
import time

import click
import yaml

from orchestrator.console.stdout import emit_json
from orchestrator.errors import JobFailed, OrchError, SpecError
from orchestrator.spec.schema import JobSpec
from orchestrator.tags import CHECKPOINT_DIR_TAG, ERROR_TAG, K8S_NAMESPACE_TAG, RAYJOB_TAG, TARGET_TAG
from orchestrator.targets import kuberay_manifest as manifest
from orchestrator.targets.naming import checkpoint_dir

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
TERMINAL = ("Complete", "Failed", "ValidationFailed")  # jobDeploymentStatus values KubeRay never leaves


def submit_k8s(
    spec: JobSpec,
    spec_path: str | None,
    *,
    namespace: str | None = None,
    image: str | None = None,
    dry_run: bool = False,
    detach: bool = False,
    output: str = "text",
    api=None,
    poll_s: float = 5.0,
):
    """Validate, then print the RayJob (dry run: nothing is created, not even an MLflow run) or
    create the run and the RayJob and, unless detached, follow it to its end."""
    from orchestrator.runs import tracking

    uri = tracking.tracking_uri(spec)
    pods, pod_uri, namespace = prepare(spec, uri, namespace or spec.cluster.kubernetes.namespace)
    image = image or spec.cluster.kubernetes.image
    if dry_run:
        print_manifest(pods, image, pod_uri, namespace, output)
        return None
    check_launchable(uri, namespace, image)
    api = api or api_client()
    run_id, name = launch(pods, spec_path, uri=uri, pod_uri=pod_uri, namespace=namespace, image=image, api=api)
    return settle(api, namespace, name, uri=uri, run_id=run_id, detach=detach, poll_s=poll_s)


def prepare(spec: JobSpec, uri: str, namespace: str) -> tuple[JobSpec, str, str]:
    """The spec as the pods see it (paths on the data volume, their MLflow URI; its model
    checked), that URI, and the namespace, checked."""
    from orchestrator.spec import preflight

    namespace = _namespace(namespace)
    pods = manifest.pod_spec(spec)
    preflight.check_model(pods, pods.model.num_classes or 10)
    pod_uri = manifest.pod_tracking_uri(spec.cluster.kubernetes, uri)
    pods.tracking.tracking_uri = pod_uri
    return pods, pod_uri, namespace


def check_launchable(uri: str, namespace: str, image: str | None) -> None:
    """A RayJob needs a training image, and its run must live in an MLflow store the pods reach."""
    from orchestrator.spec import preflight

    if not image:
        raise SpecError(
            "cluster.kubernetes.image: no training image; pass --image or set it (build one from the Dockerfile)"
        )
    if preflight.is_local_store(uri):
        raise SpecError(
            f"tracking.tracking_uri: {uri} is a local store the pods cannot reach; set it (or "
            f"$MLFLOW_TRACKING_URI) to the MLflow server of k8s/mlflow.yaml, e.g. after "
            f"`kubectl -n {namespace} port-forward svc/mlflow 5000`: http://localhost:5000"
        )


def job_tags(namespace: str, name: str) -> dict:
    """The run's tags that name its RayJob, which `orch status/logs/stop` follow."""
    return {TARGET_TAG: "k8s", K8S_NAMESPACE_TAG: namespace, RAYJOB_TAG: name}


def print_manifest(pods: JobSpec, image: str | None, pod_uri: str, namespace: str, output: str) -> None:
    """The dry run's RayJob, with placeholders for what only a real submission knows."""
    if not image:
        _say(
            "orch: warning: cluster.kubernetes.image: no training image; the manifest says "
            f"{manifest.PLACEHOLDER_IMAGE} (pass --image)"
        )
    body = manifest.rayjob_manifest(
        pods,
        run_id=manifest.PLACEHOLDER_RUN_ID,
        image=image or manifest.PLACEHOLDER_IMAGE,
        tracking_uri=pod_uri,
        namespace=namespace,
    )
    if output == "json":
        emit_json(body)
        return
    click.echo(f"# dry run: nothing created; {manifest.PLACEHOLDER_RUN_ID} stands for the MLflow run id")
    click.echo(yaml.safe_dump(body, sort_keys=False, width=1_000_000).rstrip())


def launch(
    pods: JobSpec,
    spec_path: str | None,
    *,
    uri: str,
    pod_uri: str,
    namespace: str,
    image: str,
    api,
    run_id: str | None = None,
    resume: int = 0,
) -> tuple[str, str]:
    """Create the MLflow run (or take `run_id`, a run `orch resume` reopened for its `resume`-th
    RayJob, whose entrypoint continues it), then the RayJob; a RayJob the API refuses ends the
    run FAILED. Returns the run id and the RayJob's name."""
    from orchestrator.runs import tracking

    if run_id is None:
        run_id = tracking.start_run(pods, spec_path, uri)
        tags = {
            **job_tags(namespace, manifest.rayjob_name(pods.name, run_id)),
            CHECKPOINT_DIR_TAG: checkpoint_dir(pods, run_id),
        }
        tracking.set_tags(uri, run_id, tags)
    body = manifest.rayjob_manifest(
        pods, run_id=run_id, image=image, tracking_uri=pod_uri, namespace=namespace, resume=resume
    )
    name = create(api, body, uri=uri, run_id=run_id)
    _say(
        f"RayJob {namespace}/{name} created for run {run_id} "
        f"(orch status/logs/stop {run_id}; kubectl -n {namespace} get rayjob {name})"
    )
    return run_id, name


def create(api, body: dict, *, uri: str, run_id: str) -> str:
    """Create the RayJob `body` for the MLflow run `run_id` (a job's run, or a sweep's parent);
    one the API refuses ends the run FAILED and raises a one-line OrchError. Returns its name."""
    from orchestrator.runs import tracking

    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        _custom(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    except Exception as exc:
        error = _api_error(exc, f"creating RayJob {namespace}/{name}")
        tracking.end_run(uri, run_id, "FAILED", str(error))
        raise error from None
    return name


def settle(api, namespace: str, name: str, *, uri: str, run_id: str, detach: bool, poll_s: float = 5.0):
    """What `orch submit` and `orch resume` return for a created RayJob: detached, the run as it
    stands; else follow() it to its end."""
    from orchestrator.runs.outcome import read_outcome

    if detach:
        return read_outcome(uri, run_id, status="RUNNING")
    return follow(api, namespace, name, uri=uri, run_id=run_id, poll_s=poll_s)


def follow(api, namespace: str, name: str, *, uri: str, run_id: str, poll_s: float = 5.0):
    """Print each change of the RayJob's status until it ends, then settle the MLflow run.
    Ctrl-C stops following only: the job runs on."""
    from orchestrator.runs.outcome import read_outcome

    try:
        state = wait(api, namespace, name, poll_s=poll_s)
    except KeyboardInterrupt:
        _say(f"orch: stopped following; RayJob {namespace}/{name} runs on (orch stop {run_id} ends it)")
        return read_outcome(uri, run_id, status="RUNNING")
    return finish(uri, run_id, state)


def wait(api, namespace: str, name: str, *, poll_s: float = 5.0) -> dict:
    """Poll the RayJob until jobDeploymentStatus is terminal or the RayJob is gone."""
    last = None
    while True:
        state = read_state(api, namespace, name)
        seen = (state["jobDeploymentStatus"], state["jobStatus"])
        if seen != last:
            _say(
                f"RayJob {name}: {state['jobDeploymentStatus'] or 'New'}, job {state['jobStatus'] or '-'}"
                + (f" ({state['message']})" if state["message"] else "")
            )
            last = seen
        if not state["found"] or state["jobDeploymentStatus"] in TERMINAL:
            return state
        time.sleep(poll_s)


def finish(uri: str, run_id: str, state: dict):
    """End the MLflow run if the entrypoint could not (its pod never started, or crashed before
    it could), then report the run as MLflow has it. A failed run raises JobFailed."""
    from mlflow.tracking import MlflowClient

    from orchestrator.runs import tracking
    from orchestrator.runs.outcome import read_outcome

    status, cause = ended_as(state)
    tracking.end_if_running(uri, run_id, status, None if status == "FINISHED" else cause)
    run = MlflowClient(uri).get_run(run_id)
    if run.info.status == "FAILED":
        cause = run.data.tags.get(ERROR_TAG) or state["message"] or "see orch logs"
        raise JobFailed(f"run {run_id} FAILED: {cause.strip().splitlines()[0]}")
    return read_outcome(uri, run_id)


def ended_as(state: dict) -> tuple[str, str]:
    """The status a run whose RayJob ended in `state` gets when its entrypoint could not end it
    (FINISHED, KILLED or FAILED), and the cause to record."""
    from orchestrator.runs.outcome import ended_with_job

    if not state["found"]:  # deleted: `orch stop`, or its TTL
        status = "KILLED"
    else:
        status = "FINISHED" if state["jobStatus"] == "SUCCEEDED" else ended_with_job(state["jobStatus"])
    return status, state["message"] or f"RayJob {state['rayjob']} ended {state['jobDeploymentStatus']}"


def read_state(api, namespace: str, name: str) -> dict:
    """The RayJob's status fields; found=False once it is deleted (orch stop, or its TTL)."""
    state = {"rayjob": name, "namespace": namespace, "found": True}
    try:
        body = _custom(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        status = body.get("status") or {}
    except Exception as exc:
        if getattr(exc, "status", None) != 404:
            raise _api_error(exc, f"reading RayJob {namespace}/{name}") from None
        state["found"], status = False, {"message": "the RayJob no longer exists"}
    for key in ("jobStatus", "jobDeploymentStatus", "message", "rayClusterName", "dashboardURL"):
        state[key] = status.get(key, "")
    return state


def job_status(run, *, api=None) -> dict:
    """{rayjob, namespace, jobStatus, jobDeploymentStatus, message, ...} of a run's RayJob."""
    namespace, name = _job_ref(run)
    return read_state(api or api_client(), namespace, name)


def job_logs(run, *, tail_lines: int | None = None, api=None) -> str:
    """The Ray job driver's output, which the head pod's job-logs sidecar prints."""
    namespace, name = _job_ref(run)
    api = api or api_client()
    state = read_state(api, namespace, name)
    if not state["found"] or not state["rayClusterName"]:
        raise OrchError(
            f"RayJob {namespace}/{name}: no Ray cluster to read logs from "
            f"({state['message'] or state['jobDeploymentStatus'] or 'not started yet'}); "
            f"the run's metrics are in MLflow"
        )
    core = _core(api)
    selector = f"ray.io/cluster={state['rayClusterName']},ray.io/node-type=head"
    try:
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        if not pods:
            raise OrchError(
                f"RayJob {namespace}/{name}: its head pod is not there yet ({state['jobDeploymentStatus'] or 'New'})"
            )
        pod = pods[0]
        names = [c.name for c in pod.spec.containers]
        container = manifest.LOG_CONTAINER if manifest.LOG_CONTAINER in names else names[0]
        return core.read_namespaced_pod_log(pod.metadata.name, namespace, container=container, tail_lines=tail_lines)
    except OrchError:
        raise
    except Exception as exc:
        raise _api_error(exc, f"reading the logs of RayJob {namespace}/{name}") from None


def stop_job(run, *, api=None) -> dict:
    """Delete the RayJob: KubeRay stops the Ray job, then removes its cluster and pods."""
    namespace, name = _job_ref(run)
    try:
        _custom(api or api_client()).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except Exception as exc:
        if getattr(exc, "status", None) == 404:
            return {"how": f"RayJob {namespace}/{name} was already gone"}
        raise _api_error(exc, f"deleting RayJob {namespace}/{name}") from None
    return {"how": f"deleted RayJob {namespace}/{name}; KubeRay stops the job and removes its cluster"}


def api_client():
    """A kubernetes ApiClient from the kubeconfig, else from the pod's service account."""
    from kubernetes import client, config

    try:
        config.load_kube_config()
    except Exception:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            raise OrchError("no Kubernetes configuration: set KUBECONFIG or run in a pod") from None
    return client.ApiClient()


def _custom(api):
    from kubernetes import client

    return client.CustomObjectsApi(api)


def _core(api):
    from kubernetes import client

    return client.CoreV1Api(api)


def _api_error(exc: Exception, doing: str) -> OrchError:
    """One line from an API failure: the server's own message, and the fix when it is ours."""
    status = getattr(exc, "status", None)
    if status is None:  # no answer at all: DNS, refused connection, TLS
        return OrchError(
            f"{doing}: the Kubernetes API did not answer ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        )
    try:
        detail = json.loads(exc.body).get("message") or exc.reason
    except (TypeError, ValueError, AttributeError):
        detail = getattr(exc, "reason", "") or ""
    hint = {
        403: "; the Role in k8s/rbac.yaml grants what orch needs",
        404: "; is the KubeRay operator installed (k8s/README.md)?",
    }.get(status, "")
    return OrchError(f"{doing}: {status} {getattr(exc, 'reason', '')}: {detail}{hint}")


def _job_ref(run) -> tuple[str, str]:
    tags = run.data.tags
    if RAYJOB_TAG not in tags:
        raise OrchError(f"run {run.info.run_id} was not submitted to Kubernetes (no orch.rayjob tag)")
    return tags.get(K8S_NAMESPACE_TAG, "default"), tags[RAYJOB_TAG]


def _namespace(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", value):
        raise SpecError(f"--namespace: {value!r} is not a Kubernetes namespace name (lowercase letters, digits, '-')")
    return value


def _say(text: str) -> None:
    click.echo(text, err=True)
    sys.stderr.flush()
