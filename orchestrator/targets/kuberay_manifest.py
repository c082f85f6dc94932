"""The KubeRay RayJob (ray.io/v1) for a job spec, as plain data.

Pure functions of the spec, so `orch submit --target k8s --dry-run` prints exactly what a real
submission creates, and tests validate it against KubeRay's CRD without a cluster.
"""

import math
import os
import posixpath
import re
from importlib import metadata
from urllib.parse import urlparse

from orchestrator.errors import SpecError
from orchestrator.spec.schema import PATH_FIELDS, JobSpec, KubernetesSpec, ScalingSpec
from orchestrator.targets import naming

PLACEHOLDER_RUN_ID = "RUN_ID"
PLACEHOLDER_IMAGE = "REPLACE_WITH_TRAINING_IMAGE"
IN_CLUSTER_MLFLOW = "http://mlflow:5000"  # the Service of k8s/mlflow.yaml, same namespace
LOG_CONTAINER = "job-logs"
PREEMPTION_MARGIN_S = 15  # after a drain's deadline: the node's own stop, before SIGKILL
MAX_RAYJOB_NAME = 47  # KubeRay appends "-xxxxx" for the RayCluster, whose name may not exceed 53
_LOOPBACK = ("localhost", "127.0.0.1", "::1", "0.0.0.0")
_SUFFIX = {
    "": 1,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "m": 1e-3,
}


def rayjob_manifest(
    spec: JobSpec,
    *,
    run_id: str,
    image: str,
    tracking_uri: str,
    namespace: str,
    resume: int = 0,
    command: str | None = None,
) -> dict:
    """The RayJob: a head pod that runs orch's entrypoint (submitted over HTTP to its dashboard)
    and one fixed-size worker group; KubeRay deletes the cluster `ttl` seconds after the job ends.
    `resume` = N: the run's Nth resume, a RayJob of its own whose entrypoint continues the run.
    `command`: another driver command than the trainer's (a sweep's: naming.sweep_command())."""
    k8s = spec.cluster.kubernetes
    name = rayjob_name(spec.name, run_id, resume)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": _labels(spec, run_id),
            "annotations": _annotations(spec, tracking_uri),
        },
        "spec": {
            "entrypoint": command or _train_command(spec, run_id, tracking_uri, resume=bool(resume)),
            "jobId": naming.rayjob_job_id(run_id),
            "submissionMode": "HTTPMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": k8s.ttl_seconds_after_finished,
            "rayClusterSpec": {
                "rayVersion": metadata.version("ray"),
                "enableInTreeAutoscaling": False,
                "headGroupSpec": _head_group(k8s, image, tracking_uri, naming.rayjob_job_id(run_id)),
                "workerGroupSpecs": [
                    _worker_group(spec.scaling, k8s, image, tracking_uri, spec.training.termination_grace_s)
                ],
            },
        },
    }


def rayjob_name(spec_name: str, run_id: str, resume: int = 0) -> str:
    """spec name + run id prefix (+ -rN for the run's Nth resume) as a DNS-1035 label (KubeRay's
    rule for RayJob names), at most MAX_RAYJOB_NAME characters."""
    base = re.sub(r"[^a-z0-9-]+", "-", spec_name.lower()).strip("-")
    base = re.sub(r"^[^a-z]+", "", base) or "orch"
    suffix = re.sub(r"[^a-z0-9]+", "-", run_id[:8].lower()).strip("-") + naming.resume_suffix(resume)
    return f"{base[: MAX_RAYJOB_NAME - len(suffix) - 1].rstrip('-')}-{suffix}"


def _train_command(spec: JobSpec, run_id: str, tracking_uri: str, resume: bool) -> str:
    """The trainer's driver command, with the spec in it (the RayJob's head reads no file of ours)."""
    return naming.train_command(run_id, tracking_uri, spec_b64=naming.encoded_spec(spec), resume=resume)


def worker_layout(scaling: ScalingSpec, gpus_per_node: int) -> dict:
    """How Ray Train's workers are grouped into pods: {replicas, workers_per_pod, gpus, cpus}.

    GPU workers fill pods of up to gpus_per_node GPUs (fewer when fewer suffice); CPU workers
    get a pod each. STRICT_SPREAD needs a pod per worker, STRICT_PACK a single pod.
    """
    n = scaling.num_workers
    if not scaling.use_gpu:
        return {"replicas": n, "workers_per_pod": 1, "gpus": 0, "cpus": scaling.cpus_per_worker}
    per_worker = scaling.gpus_per_worker
    if per_worker > gpus_per_node:
        raise SpecError(
            f"scaling.gpus_per_worker: {per_worker:g} GPUs do not fit a pod of "
            f"cluster.kubernetes.gpus_per_node={gpus_per_node}; raise gpus_per_node"
        )
    fit = 1 if scaling.placement == "STRICT_SPREAD" else math.floor(gpus_per_node / per_worker + 1e-9)
    replicas = math.ceil(n / fit)
    if scaling.placement == "STRICT_PACK" and replicas > 1:
        raise SpecError(
            f"scaling.placement: STRICT_PACK puts all {n} workers ({n * per_worker:g} GPUs) in "
            f"one pod, more than cluster.kubernetes.gpus_per_node={gpus_per_node}; use PACK"
        )
    per_pod = math.ceil(n / replicas)
    return {
        "replicas": replicas,
        "workers_per_pod": per_pod,
        "gpus": min(gpus_per_node, math.ceil(per_pod * per_worker - 1e-9)),
        "cpus": per_pod * scaling.cpus_per_worker,
    }


def pod_spec(spec: JobSpec, cwd: str | None = None) -> JobSpec:
    """The spec as the pods see it: data and checkpoint paths on the data volume.

    `orch` made relative paths absolute from the directory it runs in; those are placed under
    data_mount (the volume mirrors that directory). Other paths must already be under
    data_mount, or be URIs.
    """
    cwd = os.path.abspath(cwd or os.getcwd())
    mount = spec.cluster.kubernetes.data_mount
    copy = spec.model_copy(deep=True)
    for section, field in PATH_FIELDS:
        value = getattr(getattr(spec, section), field)
        setattr(getattr(copy, section), field, _pod_path(value, f"{section}.{field}", mount, cwd))
    if "://" not in copy.checkpoint.storage:
        copy.checkpoint.shared = True  # the volume is ReadWriteMany: every pod sees the same files
    return copy


def pod_tracking_uri(k8s: KubernetesSpec, submit_uri: str) -> str:
    """MLflow as the pods reach it: cluster.kubernetes.tracking_uri, else the submitter's URI when
    it names a server off this machine, else the in-cluster Service of k8s/mlflow.yaml."""
    from orchestrator.spec.preflight import is_local_store

    if k8s.tracking_uri:
        if is_local_store(k8s.tracking_uri) or _loopback(k8s.tracking_uri):
            raise SpecError(
                f"cluster.kubernetes.tracking_uri: the pods cannot reach {k8s.tracking_uri}; "
                f"give the MLflow server's in-cluster address, e.g. {IN_CLUSTER_MLFLOW}"
            )
        return k8s.tracking_uri
    if is_local_store(submit_uri) or _loopback(submit_uri):
        return IN_CLUSTER_MLFLOW
    return submit_uri


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes quantity ("16Gi", "500M") in bytes."""
    number, suffix = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", quantity).groups()
    return int(float(number) * _SUFFIX[suffix])


def _pod_path(value: str, where: str, mount: str, cwd: str) -> str:
    if "://" in value or _under(value, mount):
        return value
    if cwd != "/" and _under(value, cwd):
        return posixpath.normpath(posixpath.join(mount, os.path.relpath(value, cwd)))
    raise SpecError(
        f"{where}: {value} is not on the pods' data volume; use a path under "
        f"cluster.kubernetes.data_mount ({mount}), a relative path (placed under it) or a URI"
    )


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _loopback(uri: str) -> bool:
    return urlparse(uri).hostname in _LOOPBACK


def _labels(spec: JobSpec, run_id: str) -> dict:
    job = re.sub(r"[^A-Za-z0-9._-]+", "-", spec.name)[:63].strip("-._") or "orch"
    return {
        "app.kubernetes.io/name": "orch",
        "app.kubernetes.io/managed-by": "orch",
        "orch/job": job,
        "orch/run-id": run_id,
    }


def _annotations(spec: JobSpec, tracking_uri: str) -> dict:
    """What the base64 spec in the entrypoint says about places, for `kubectl describe`."""
    return {
        "orch/tracking-uri": tracking_uri,
        "orch/data-train": spec.data.train,
        "orch/data-val": spec.data.val,
        "orch/checkpoint-storage": spec.checkpoint.storage,
    }


def _head_group(k8s: KubernetesSpec, image: str, tracking_uri: str, ray_job_id: str) -> dict:
    """The head runs the driver only (no GPUs); it mounts the data volume because Ray Train's
    controller writes checkpoint bookkeeping there, and a sidecar prints the driver's log file
    to its own stdout, so pod logs show the job (HTTPMode has no submitter pod)."""
    resources = {"cpu": k8s.head_cpu, "memory": k8s.head_memory}
    head = {
        "name": "ray-head",
        "image": image,
        "ports": [
            {"containerPort": 6379, "name": "gcs-server"},
            {"containerPort": 8265, "name": "dashboard"},
            {"containerPort": 10001, "name": "client"},
        ],
        "env": _env(tracking_uri),
        "resources": {"requests": resources, "limits": dict(resources)},
        "volumeMounts": [_data_mount(k8s), {"name": "ray-logs", "mountPath": "/tmp/ray"}],
    }
    log_file = f"/tmp/ray/session_latest/logs/job-driver-{ray_job_id}.log"
    logs = {
        "name": LOG_CONTAINER,
        "image": image,
        "command": ["tail", "-n", "+1", "-F", log_file],
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
        "volumeMounts": [{"name": "ray-logs", "mountPath": "/tmp/ray", "readOnly": True}],
    }
    volumes = [_data_volume(k8s), {"name": "ray-logs", "emptyDir": {}}]
    return {
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-gpus": "0"},
        "template": {"spec": _pod(k8s, [head, logs], volumes)},
    }


def _worker_group(scaling: ScalingSpec, k8s: KubernetesSpec, image: str, tracking_uri: str, grace_s: int) -> dict:
    """Fixed size (min = max = replicas): DDP needs every worker, and autoscaling would only
    add pods Ray Train does not use. The object store is kept within /dev/shm, whose other
    half is left to NCCL and data loaders. A pod Kubernetes stops drains its own Ray node for
    preemption first (preStop, targets/pod_drain.py) and has `grace_s` (training.termination_grace_s)
    for its workers to checkpoint, plus PREEMPTION_MARGIN_S for its node to stop."""
    layout = worker_layout(scaling, k8s.gpus_per_node)
    resources = {"cpu": _cpu(layout["cpus"]), "memory": k8s.worker_memory}
    if layout["gpus"]:
        resources["nvidia.com/gpu"] = str(layout["gpus"])
    worker = {
        "name": "ray-worker",
        "image": image,
        "env": _env(tracking_uri),
        "resources": {"requests": resources, "limits": dict(resources)},
        "volumeMounts": [_data_mount(k8s), {"name": "shm", "mountPath": "/dev/shm"}],
        "lifecycle": {"preStop": {"exec": {"command": drain_command(grace_s)}}},
    }
    volumes = [_data_volume(k8s), {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": k8s.shm_size}}]
    pod = _pod(k8s, [worker], volumes)
    pod["terminationGracePeriodSeconds"] = grace_s + PREEMPTION_MARGIN_S
    if layout["gpus"]:
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    replicas = layout["replicas"]
    return {
        "groupName": "gpu-workers" if layout["gpus"] else "cpu-workers",
        "replicas": replicas,
        "minReplicas": replicas,
        "maxReplicas": replicas,
        "rayStartParams": {"object-store-memory": str(quantity_bytes(k8s.shm_size) // 2)},
        "template": {"spec": pod},
    }


def drain_command(grace_s: int) -> list[str]:
    """A worker pod's preStop hook: drain its Ray node with a deadline `grace_s` away, then wait it out."""
    return ["python", "-m", "orchestrator.targets.pod_drain", "--deadline-s", str(grace_s)]


def _pod(k8s: KubernetesSpec, containers: list, volumes: list) -> dict:
    # fsGroup 1000: the image's non-root user (see Dockerfile) can write checkpoints to the volume.
    return {
        "serviceAccountName": k8s.service_account,
        "securityContext": {"fsGroup": 1000},
        "containers": containers,
        "volumes": volumes,
    }


def _env(tracking_uri: str) -> list:
    return [{"name": "MLFLOW_TRACKING_URI", "value": tracking_uri}]


def _data_mount(k8s: KubernetesSpec) -> dict:
    return {"name": "data", "mountPath": k8s.data_mount}


def _data_volume(k8s: KubernetesSpec) -> dict:
    return {"name": "data", "persistentVolumeClaim": {"claimName": k8s.data_claim}}


def _cpu(cpus: float) -> str:
    return str(int(cpus)) if float(cpus).is_integer() else f"{math.ceil(cpus * 1000)}m"
