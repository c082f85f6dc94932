"""`orch sweep --target k8s`: one KubeRay RayJob runs the whole sweep, and `orch resume PARENT`
creates the next one.

No Kubernetes API server can run on these machines, so FakeKube, a real HTTP server on
127.0.0.1, stands in for one (tests/test_kuberay_client.py's): the kubernetes
client talks to it over HTTP and it answers scripted responses, recording every request. No Ray
runs: what the RayJob's pods would do is not simulated. MLflow is the session's tracking server
as k8s/mlflow.yaml runs it (on PostgreSQL; tests/server_fixtures.py), the one the pods would
reach as cluster.kubernetes.tracking_uri; each test keeps to an experiment of its own there.
The refusals check against a sqlite file, the store `--target k8s` refuses.
"""

import json
import uuid
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from test_k8s_manifests import validate
from test_kuberay_client import FakeKube, rayjob, status

from orchestrator.cli.main import main
from orchestrator.runs import tracking
from orchestrator.sweep import records
from orchestrator.targets import kuberay
from orchestrator.targets import kuberay_manifest as manifest

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "jobs" / "cifar_resnet20.yaml"
RAYJOBS = "/apis/ray.io/v1/namespaces/orch/rayjobs"
POD_URI = "http://mlflow:5000"
SWEEP_ENTRYPOINT = "python -m orchestrator.sweep.entrypoint --parent-run-id {} --tracking-uri " + POD_URI


@pytest.fixture
def kube(monkeypatch):
    """The fake API server, which orch's kuberay.api_client() returns a client of."""
    fake = FakeKube()
    monkeypatch.setattr(kuberay, "api_client", fake.api)
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def reachable_store(mlflow_server, monkeypatch) -> str:
    """The tracking server, as $MLFLOW_TRACKING_URI: the store the sweep's pods would log to too."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    return mlflow_server.uri


def write_sweep(folder: Path, **keys) -> str:
    """2 architectures x 2 seeds of ResNet-20 on CIFAR-10, 2 GPU workers each; relative data and
    checkpoint paths, which land under the data volume. Its runs go to an experiment named after
    the folder, so tests sharing one server find only their own."""
    sweep = {
        "name": "arch-by-seed",
        "job": str(JOB),
        "set": {
            "scaling.num_workers": 2,
            "cluster.kubernetes.tracking_uri": POD_URI,
            "experiment": experiment_of(folder),
            **keys.pop("set", {}),
        },
        "grid": {"model.arch": ["cifar_plain20", "cifar_resnet20"], "training.seed": [0, 1]},
        **keys,
    }
    path = folder / "sweep.yaml"
    path.write_text(json.dumps(sweep))  # JSON is YAML
    return str(path)


def run(capsys, *args) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def worker_pods(body: dict) -> tuple[int, int]:
    """(replicas, GPUs per pod) of the RayJob's one worker group."""
    (group,) = body["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    resources = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    return group["replicas"], int(resources["nvidia.com/gpu"])


def experiment_of(folder: Path) -> str:
    return f"sweep-k8s-{folder.name}-{uuid.uuid5(uuid.NAMESPACE_URL, str(folder)).hex[:8]}"


def parent_run(uri: str, folder: Path):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_of(folder))
    (parent,) = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("orch.kind") == "sweep"]
    return parent


# --- dry run -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "keys, limit, pods",
    [
        ({"max_concurrent_trials": 2}, 2, (1, 4)),  # 2 trials x 2 workers x 1 GPU, in one pod of 8 GPUs
        ({}, 1, (1, 2)),  # unset: 1 trial at once
        # STRICT_PACK: each trial's workers (2 x 4 GPUs) in a pod of their own
        (
            {"max_concurrent_trials": 3, "set": {"scaling.placement": "STRICT_PACK", "scaling.gpus_per_worker": 4}},
            3,
            (3, 8),
        ),
    ],
)
def test_dry_run_prints_a_rayjob_made_for_the_sweep(keys, limit, pods, in_tmp, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{in_tmp / 'mlflow.db'}")
    sweep = write_sweep(in_tmp, **keys)
    code, out, err = run(capsys, "sweep", sweep, "--target", "k8s", "--image", "img", "--dry-run", "--output", "json")
    assert code == 0, err
    plan = json.loads(out)
    body = plan["rayjob"]
    validate(body)  # against KubeRay's CRD
    assert plan["max_concurrent_trials"] == limit and len(plan["trials"]) == 4
    assert body["spec"]["entrypoint"] == SWEEP_ENTRYPOINT.format(manifest.PLACEHOLDER_RUN_ID)
    assert body["metadata"]["name"] == manifest.rayjob_name("cifar_resnet20-sweep", manifest.PLACEHOLDER_RUN_ID)
    assert worker_pods(body) == pods
    assert body["metadata"]["annotations"]["orch/data-train"] == "/data/data/cifar10/train.beton"

    code, text, err = run(capsys, "sweep", sweep, "--target", "k8s", "--image", "img", "--dry-run")
    assert code == 0, err
    assert yaml.safe_load(text) == body  # the rest are comments
    assert "# trial 3: model.arch=cifar_resnet20 training.seed=1" in text
    assert not (in_tmp / "mlflow.db").exists()  # nothing created, not even an MLflow run


def test_a_trial_whose_workers_fit_no_pod_is_refused(in_tmp, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{in_tmp / 'mlflow.db'}")
    sweep = write_sweep(in_tmp, set={"scaling.gpus_per_worker": 2}, grid={"cluster.kubernetes.gpus_per_node": [1, 2]})
    code, _, err = run(capsys, "sweep", sweep, "--target", "k8s", "--dry-run")
    assert code == 2, err
    (line,) = [line for line in err.splitlines() if line.startswith("orch: error:")]
    assert line.startswith("orch: error: trial 0 (gpus_per_node=1): scaling.gpus_per_worker: 2 GPUs"), line


# --- submitting ----------------------------------------------------------------------------------


def submit_detached(kube, capsys, folder: Path, **keys) -> dict:
    kube.reply("POST", RAYJOBS, (201, {"kind": "RayJob"}))
    code, out, err = run(
        capsys, "sweep", write_sweep(folder, **keys), "--target", "k8s", "--image", "img", "--detach", "-o", "json"
    )
    assert code == 0, err
    return json.loads(out)


def test_submit_creates_one_rayjob_and_a_running_parent(kube, reachable_store, in_tmp, capsys, tmp_path):
    result = submit_detached(kube, capsys, in_tmp, max_concurrent_trials=2)
    parent_id = result["parent_run_id"]
    assert result["status"] == "RUNNING"  # the entrypoint in the RayJob runs the trials and ends it
    assert [t["status"] for t in result["trials"]] == ["NOT_STARTED"] * 4
    (request,) = kube.requests
    body = request["body"]
    assert (request["method"], request["path"]) == ("POST", RAYJOBS)
    name = manifest.rayjob_name("cifar_resnet20-sweep", parent_id)
    assert body["metadata"]["name"] == name and name.endswith(parent_id[:8])
    assert body["spec"]["entrypoint"] == SWEEP_ENTRYPOINT.format(parent_id)
    assert worker_pods(body) == (1, 4)
    validate(body)

    parent = MlflowClient(reachable_store).get_run(parent_id)
    tags = parent.data.tags
    assert parent.info.status == "RUNNING" and tags["orch.kind"] == "sweep"
    assert {k: tags[k] for k in ("orch.target", "orch.k8s_namespace", "orch.rayjob", "orch.k8s_image")} == {
        "orch.target": "k8s",
        "orch.k8s_namespace": "orch",
        "orch.rayjob": name,
        "orch.k8s_image": "img",
    }
    trials = records.artifact_json(reachable_store, parent_id, "sweep/trials.json")  # what the pods read
    for trial in trials:
        spec = trial["spec"]
        assert spec["data"]["train"] == "/data/data/cifar10/train.beton"
        assert spec["checkpoint"]["storage"] == "/data/checkpoints" and spec["checkpoint"]["shared"]
        assert spec["tracking"]["tracking_uri"] == POD_URI
    assert records.artifact_json(reachable_store, parent_id, "sweep/sweep.json")["max_concurrent_trials"] == 2
    kube.reply("GET", f"{RAYJOBS}/{name}", (200, rayjob(name, jobDeploymentStatus="Running", jobStatus="RUNNING")))
    assert kuberay.job_status(parent, api=kube.api())["jobStatus"] == "RUNNING"  # what `orch status PARENT` reads


def test_a_refused_rayjob_ends_the_parent_failed(kube, reachable_store, in_tmp, capsys):
    message = 'rayjobs.ray.io is forbidden: User "alice" cannot create resource "rayjobs" in the namespace "orch"'
    kube.reply("POST", RAYJOBS, (403, status(403, "Forbidden", message)))
    code, _, err = run(capsys, "sweep", write_sweep(in_tmp), "--target", "k8s", "--image", "img")
    assert code == 1 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("orch: error:")]
    parent = parent_run(reachable_store, in_tmp)
    assert line.startswith(f"orch: error: sweep {parent.info.run_id} FAILED: creating RayJob orch/") and message in line
    assert parent.info.status == "FAILED" and message in parent.data.tags["orch.error"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        ([], "cluster.kubernetes.image: no training image; pass --image or set it"),
        (["--image", "img"], "tracking.tracking_uri: sqlite:///"),
        (["--image", "img", "--namespace", "Not_A_Name"], "--namespace: 'Not_A_Name' is not a Kubernetes namespace"),
    ],
)
def test_submit_refuses_before_any_run_exists(args, fragment, in_tmp, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{in_tmp / 'mlflow.db'}")
    code, _, err = run(capsys, "sweep", write_sweep(in_tmp), "--target", "k8s", *args)
    assert code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("orch: error:")]
    assert fragment in line, line
    assert not (in_tmp / "mlflow.db").exists()


# --- resuming ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ended, code, status_after",
    [
        (
            {"jobDeploymentStatus": "Failed", "message": "worker pods stayed Pending (Insufficient nvidia.com/gpu)"},
            1,
            "FAILED",
        ),
        (None, 130, "KILLED"),  # the RayJob was deleted (orch stop)
    ],
)
def test_resume_creates_the_next_rayjob(ended, code, status_after, kube, reachable_store, in_tmp, capsys):
    parent_id = submit_detached(kube, capsys, in_tmp, max_concurrent_trials=2)["parent_run_id"]
    # What the RayJob left: trials 0-2 finished, trial 3 killed with the sweep (`orch stop PARENT`).
    for trial in records.recorded_trials(reachable_store, parent_id):
        child = records.create_child(reachable_store, parent_id, trial)
        tracking.end_run(reachable_store, child, "FINISHED" if trial.index < 3 else "KILLED")
    tracking.end_run(reachable_store, parent_id, "KILLED", "stopped by `orch stop`")
    name = manifest.rayjob_name("cifar_resnet20-sweep", parent_id, 1)
    kube.requests.clear()
    if ended:
        kube.reply("GET", f"{RAYJOBS}/{name}", (200, rayjob(name, **ended)))

    result_code, _, err = run(capsys, "resume", parent_id)
    assert result_code == code, err
    post, *gets = kube.requests
    body = post["body"]
    assert (post["method"], body["metadata"]["name"]) == ("POST", name) and name.endswith(f"{parent_id[:8]}-r1")
    assert body["spec"]["entrypoint"] == SWEEP_ENTRYPOINT.format(parent_id)
    assert body["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"] == "img"
    assert worker_pods(body) == (1, 2)  # one trial left: a cluster for one
    assert {(r["method"], r["path"]) for r in gets} == {("GET", f"{RAYJOBS}/{name}")}
    parent = MlflowClient(reachable_store).get_run(parent_id)
    assert parent.info.status == status_after
    assert parent.data.tags["orch.rayjob"] == name and parent.data.tags["orch.resumes"] == "1"
    if ended:
        assert "Insufficient nvidia.com/gpu" in parent.data.tags["orch.error"]
        assert "Insufficient nvidia.com/gpu" in err.splitlines()[-1]
