"""Kubernetes manifests: those in k8s/ and the RayJob `orch submit --target k8s --dry-run` prints.

Core kinds are validated with kubernetes-validate in strict mode (unknown fields rejected)
against Kubernetes 1.37's schemas; ray.io kinds against KubeRay v1.7.0's CRDs
(tests/data/kuberay), made strict the way the API server is: a field the schema does
not list is an error. No cluster is needed.
"""

import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from orchestrator.cli.main import main
from orchestrator.errors import SpecError
from orchestrator.spec import load_spec
from orchestrator.spec.schema import KubernetesSpec, ScalingSpec
from orchestrator.targets import kuberay_manifest as manifest

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
# KubeRay v1.7.0's CRDs travel with the tests (tests/data/kuberay/README.md says whence).
CRDS = Path(__file__).resolve().parent / "data" / "kuberay"
JOB = ROOT / "jobs" / "resnet152_imagenet.yaml"
K8S_VERSION = "1.37.0"
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = {"RayJob": 47, "RayCluster": 53}  # KubeRay's own limits
NOT_K8S = {"Kustomization"}  # kustomize's file, never sent to the API server


@cache
def crd_validator(kind: str) -> jsonschema.Draft202012Validator:
    path = CRDS / f"ray.io_{kind.lower()}s.yaml"
    crd = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)  # 3x faster
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft202012Validator(strict_schema(version["schema"]["openAPIV3Schema"]))


def strict_schema(schema):
    """An OpenAPI v3 CRD schema as JSON Schema: x-kubernetes-* dropped (int-or-string fields
    already carry anyOf [integer, string]), nullable as a null type, and additionalProperties
    false wherever properties are listed and unknown fields are not preserved."""
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key == "properties":
            out[key] = {name: strict_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = strict_schema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [strict_schema(sub) for sub in value]
        else:
            out[key] = value
    if schema.get("nullable") and "type" in schema:
        out["type"] = [schema["type"], "null"]
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def validate(doc: dict) -> None:
    """Raise if the API server would reject `doc` (as far as its schema tells)."""
    if doc["apiVersion"].startswith("ray.io/"):
        errors = sorted(crd_validator(doc["kind"]).iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:5]]
        name = doc["metadata"]["name"]
        assert DNS_1035.match(name) and len(name) <= MAX_NAME[doc["kind"]], name
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    claims = [t["metadata"]["name"] for t in doc.get("spec", {}).get("volumeClaimTemplates", [])]
    for pod in pod_specs(doc):
        check_pod(pod, claims)


def pod_specs(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    if doc["kind"] == "RayJob":
        spec = spec["rayClusterSpec"]
    if doc["kind"] in ("RayJob", "RayCluster"):
        return [g["template"]["spec"] for g in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]]
    return [spec["template"]["spec"]] if "template" in spec else []


def check_pod(pod: dict, claims: list[str]) -> None:
    """What the schema cannot say: mounts name declared volumes (or a StatefulSet's claim
    templates), names are unique."""
    volumes = [v["name"] for v in pod.get("volumes", [])] + claims
    assert len(volumes) == len(set(volumes)), volumes
    names = [c["name"] for c in pod["containers"]]
    assert len(names) == len(set(names)), names
    for container in pod["containers"]:
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, (container["name"], mount)


def k8s_docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


# --- k8s/ -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in K8S.glob("*.yaml")))
def test_every_manifest_validates(name):
    docs = k8s_docs(name)
    assert docs
    for doc in docs:
        if doc["kind"] not in NOT_K8S:
            validate(doc)


def test_kustomization_lists_existing_files_and_no_secrets():
    kustomization = k8s_docs("kustomization.yaml")[0]
    assert kustomization["namespace"] == "orch"
    resources = kustomization["resources"]
    assert all((K8S / r).is_file() for r in resources), resources
    kinds = {d["kind"] for r in resources for d in k8s_docs(r)}
    assert "Secret" not in kinds  # credentials are created by hand (secrets.example.yaml)
    assert {
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "StatefulSet",
        "RayCluster",
    } <= kinds
    assert not {p.name for p in K8S.glob("*.yaml")} - set(resources) - {"kustomization.yaml", "secrets.example.yaml"}


def test_rbac_grants_only_what_orch_needs():
    docs = {d["kind"]: d for d in k8s_docs("rbac.yaml")}
    assert set(docs) == {"ServiceAccount", "Role", "RoleBinding"}  # no ClusterRole
    allowed = {
        ("ray.io", "rayjobs"): {"get", "list", "watch", "create", "delete", "patch"},
        ("ray.io", "rayclusters"): {"get", "list", "watch", "create", "delete", "patch"},
        ("", "pods"): {"get", "list", "watch"},
        ("", "pods/log"): {"get", "list", "watch"},
    }
    granted = set()
    for rule in docs["Role"]["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule  # no resourceNames/nonResourceURLs tricks
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert set(rule["verbs"]) <= allowed.get((group, resource), set()), (group, resource, rule["verbs"])
                granted.add((group, resource))
    assert granted == set(allowed)
    binding = docs["RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "orch"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "orch", "namespace": "orch"}]


def test_storage_is_shared_and_matches_the_spec_default():
    (claim,) = k8s_docs("storage.yaml")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["metadata"]["name"] == KubernetesSpec().data_claim


def test_mlflow_server_uses_postgres_and_s3_from_secrets():
    docs = {(d["kind"], d["metadata"]["name"]): d for d in k8s_docs("mlflow.yaml")}
    server = docs["Deployment", "mlflow"]["spec"]["template"]["spec"]["containers"][0]
    args = " ".join(server["args"])
    assert "--backend-store-uri=postgresql://" in args and "--artifacts-destination=" in args
    secrets = {
        e["valueFrom"]["secretKeyRef"]["name"] for e in server["env"] if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert secrets == {"mlflow-db", "mlflow-s3"}
    assert "s3://" in docs["ConfigMap", "mlflow-config"]["data"]["MLFLOW_ARTIFACTS_DESTINATION"]
    assert "--serve-artifacts" in server["args"]  # pods and laptops need no S3 credentials
    assert docs["Service", "mlflow"]["spec"]["ports"][0]["port"] == 5000  # manifest.IN_CLUSTER_MLFLOW
    assert manifest.IN_CLUSTER_MLFLOW == "http://mlflow:5000"


def test_dockerfile_has_cuda_torch_ffcv_libraries_and_the_project():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM \S*(pytorch|cuda)\S*", text, re.M | re.I)
    for package in ("pkg-config", "libopencv-dev", "libturbojpeg0-dev"):
        assert package in text
    # Every package at its locked version (tests/test_lock.py checks the lock against pyproject),
    # the project with the MLflow server's clients.
    installs = [line for line in re.findall(r"pip install [^\n]*", text) if "--upgrade pip" not in line]
    assert installs and all("-c requirements.lock" in line for line in installs), installs
    assert "COPY requirements.lock" in text
    assert any('ray[default,train]"' in line for line in installs)
    assert any('".[server]"' in line for line in installs)
    assert re.search(r"^USER (?!root)", text, re.M)


# --- the RayJob orch writes -----------------------------------------------------------------


def dry_run(capsys, *args) -> tuple[str, str]:
    main(["submit", str(JOB), "--target", "k8s", "--dry-run", *args])
    out = capsys.readouterr()
    return out.out, out.err


def test_dry_run_prints_a_valid_rayjob(capsys, in_tmp):
    out, err = dry_run(capsys, "--image", "registry.example.com/orch:1")
    rayjob = yaml.safe_load(out)
    validate(rayjob)
    spec = rayjob["spec"]
    assert rayjob["metadata"]["namespace"] == "orch"
    assert spec["submissionMode"] == "HTTPMode" and spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] == 3600
    assert spec["rayClusterSpec"]["rayVersion"] == "2.60.0"
    assert "--run-id RUN_ID" in spec["entrypoint"] and "--spec-b64 " in spec["entrypoint"]
    (workers,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 1
    pod = workers["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "8" and limits["cpu"] == "64"  # 8 workers x (1 GPU, 8 CPUs)
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod["volumes"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "orch-data"}} in pod["volumes"]
    # A stopped pod drains its own Ray node for preemption (deadline training.termination_grace_s),
    # waits it out, and has 15 s more for its node to stop before Kubernetes kills it.
    drain = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert drain == ["python", "-m", "orchestrator.targets.pod_drain", "--deadline-s", "60"]
    assert pod["terminationGracePeriodSeconds"] == 75
    head = spec["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"] == {"dashboard-host": "0.0.0.0", "num-gpus": "0"}
    assert not list(in_tmp.iterdir())  # no MLflow store, nothing written


def test_dry_run_spec_is_the_pods_view(capsys, in_tmp):
    import base64

    out, _ = dry_run(capsys, "--image", "img")
    b64 = yaml.safe_load(out)["spec"]["entrypoint"].split("--spec-b64 ")[1]
    spec = json.loads(base64.b64decode(b64))
    assert spec["data"]["train"] == "/data/data/imagenet/train.beton"  # relative: on the data volume
    assert spec["checkpoint"]["storage"] == "/data/checkpoints"
    assert spec["tracking"]["tracking_uri"] == "http://mlflow:5000"


def test_the_grace_period_sets_the_drain_deadline(capsys, in_tmp):
    out, _ = dry_run(capsys, "--image", "img", "--set", "training.termination_grace_s=120", "--output", "json")
    pod = json.loads(out)["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1] == "120"
    assert pod["terminationGracePeriodSeconds"] == 135


def test_four_gpu_nodes_make_two_worker_pods(capsys, in_tmp):
    out, _ = dry_run(capsys, "--image", "img", "--set", "cluster.kubernetes.gpus_per_node=4", "--output", "json")
    rayjob = json.loads(out)
    validate(rayjob)
    (workers,) = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert workers["replicas"] == 2
    assert workers["template"]["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == "4"


def test_dry_run_without_image_uses_a_placeholder_and_says_so(capsys, in_tmp):
    out, err = dry_run(capsys, "--namespace", "research")
    rayjob = yaml.safe_load(out)
    validate(rayjob)
    assert rayjob["metadata"]["namespace"] == "research"
    assert manifest.PLACEHOLDER_IMAGE in out and "--image" in err


@pytest.mark.parametrize(
    "args, fragment",
    [
        (
            ["--set", "data.train=/elsewhere/train.beton"],
            "data.train: /elsewhere/train.beton is not on the pods' data volume",
        ),
        (["--set", "scaling.gpus_per_worker=16"], "cluster.kubernetes.gpus_per_node"),
        (["--set", "cluster.kubernetes.worker_memory=64GB"], "cluster.kubernetes.worker_memory"),
        (["--namespace", "Research"], "--namespace"),
        (["--set", "cluster.kubernetes.tracking_uri=sqlite:///m.db"], "cluster.kubernetes.tracking_uri"),
        (["--set", "training.termination_grace_s=0"], "training.termination_grace_s"),
    ],
)
def test_bad_k8s_input_is_one_line(args, fragment, capsys, in_tmp):
    with pytest.raises(SystemExit) as exit_info:
        dry_run(capsys, "--image", "img", *args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("orch: error:")]
    assert fragment in line, line


def test_submit_help():
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", "submit", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--target [local|ray|k8s]" in proc.stdout and "--namespace" in proc.stdout and "--image" in proc.stdout


# --- pure pieces ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scaling, gpn, expected",
    [
        (dict(num_workers=8, use_gpu=True, gpus_per_worker=1, cpus_per_worker=8), 8, (1, 8, 8, 64)),
        (dict(num_workers=8, use_gpu=True, gpus_per_worker=1, cpus_per_worker=8), 4, (2, 4, 4, 32)),
        (dict(num_workers=5, use_gpu=True, gpus_per_worker=3), 8, (3, 2, 6, 2)),  # 2 of 3 GPUs fit a pod
        (dict(num_workers=4, use_gpu=True, gpus_per_worker=0.5), 8, (1, 4, 2, 4)),
        (dict(num_workers=4, use_gpu=True, placement="STRICT_SPREAD"), 8, (4, 1, 1, 1)),
        (dict(num_workers=3, cpus_per_worker=0.5), 8, (3, 1, 0, 0.5)),  # CPU: a pod per worker
    ],
)
def test_worker_layout(scaling, gpn, expected):
    layout = manifest.worker_layout(ScalingSpec(**scaling), gpn)
    assert (layout["replicas"], layout["workers_per_pod"], layout["gpus"], layout["cpus"]) == expected


def test_strict_pack_must_fit_one_pod():
    with pytest.raises(SpecError, match="STRICT_PACK"):
        manifest.worker_layout(ScalingSpec(num_workers=16, use_gpu=True, placement="STRICT_PACK"), 8)


@pytest.mark.parametrize("spec_name", ["resnet152-imagenet", "3D_Net.v2", "a" * 80, "--"])
@pytest.mark.parametrize("resume, suffix", [(0, "-01234567"), (12, "-01234567-r12")])
def test_rayjob_names_are_kuberay_valid(spec_name, resume, suffix):
    name = manifest.rayjob_name(spec_name, "0123456789abcdef0123456789abcdef", resume)
    assert DNS_1035.match(name) and len(name) <= 47 and name.endswith(suffix), name


def test_pod_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(JOB, ["checkpoint.storage=s3://bucket/ckpt", "data.val=/data/imagenet/val.beton"])
    pods = manifest.pod_spec(spec)
    assert pods.data.train == "/data/data/imagenet/train.beton"
    assert pods.data.val == "/data/imagenet/val.beton"
    assert pods.checkpoint.storage == "s3://bucket/ckpt"
    assert manifest.pod_spec(load_spec(JOB)).checkpoint.shared  # on the ReadWriteMany volume
    assert spec.data.train == str(tmp_path / "data/imagenet/train.beton")  # the caller's spec is untouched


@pytest.mark.parametrize(
    "explicit, submit_uri, expected",
    [
        (None, "sqlite:///mlflow.db", "http://mlflow:5000"),
        (None, "http://localhost:5000", "http://mlflow:5000"),  # a port-forward: not the pods' address
        (None, "https://mlflow.example.com", "https://mlflow.example.com"),
        ("http://mlflow.tracking:80", "http://localhost:5000", "http://mlflow.tracking:80"),
    ],
)
def test_pod_tracking_uri(explicit, submit_uri, expected):
    assert manifest.pod_tracking_uri(KubernetesSpec(tracking_uri=explicit), submit_uri) == expected


def test_validation_rejects_unknown_fields():
    """The strict CRD schema is not vacuous: a misspelled field fails, as on the API server."""
    spec = load_spec(JOB)
    good = manifest.rayjob_manifest(
        spec, run_id="0" * 32, image="img", tracking_uri="http://mlflow:5000", namespace="orch"
    )
    validate(good)
    typo = json.loads(json.dumps(good))
    typo["spec"]["submissionMod"] = "HTTPMode"
    deep = json.loads(json.dumps(good))
    deep["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["gpus"] = 8
    for bad in (typo, deep):
        with pytest.raises(AssertionError):
            validate(bad)
    deployment = k8s_docs("mlflow.yaml")[1]
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)


@pytest.mark.parametrize("job", sorted(p.name for p in (ROOT / "jobs").glob("*.yaml")))
def test_every_job_makes_a_valid_rayjob(job, in_tmp):
    pods = manifest.pod_spec(load_spec(ROOT / "jobs" / job))
    body = manifest.rayjob_manifest(
        pods, run_id="f" * 32, image="img", tracking_uri="http://mlflow:5000", namespace="orch"
    )
    validate(body)
    (workers,) = body["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    layout = manifest.worker_layout(pods.scaling, pods.cluster.kubernetes.gpus_per_node)
    assert workers["replicas"] * layout["workers_per_pod"] >= pods.scaling.num_workers
