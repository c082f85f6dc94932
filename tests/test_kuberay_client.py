"""orch's calls to the Kubernetes API for `--target k8s`, and the MLflow run around them.

No Kubernetes API server can run on these machines (no container engine, no apiserver), so a
real HTTP server on 127.0.0.1 stands in for one: the kubernetes client talks to it over HTTP,
and it checks each request's method, path, query and JSON body and answers as the API server
would (Status objects for errors). MLflow is a real sqlite store in a temporary directory; the
functions below the CLI take it directly, since `orch submit --target k8s` itself refuses a
store the pods cannot reach.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes.client import ApiClient, Configuration
from mlflow.tracking import MlflowClient

from orchestrator.cli.main import main
from orchestrator.errors import JobFailed, OrchError
from orchestrator.runs import tracking
from orchestrator.spec import load_spec
from orchestrator.targets import kuberay, resume
from orchestrator.targets import kuberay_manifest as manifest

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "jobs" / "resnet152_imagenet.yaml"
RAYJOBS = "/apis/ray.io/v1/namespaces/orch/rayjobs"
POD_URI = "http://mlflow:5000"


class FakeKube:
    """Answers scripted responses per (method, path) (the last one repeats) and records every
    request as {method, path, query, body}. Anything unscripted gets a 404 Status."""

    def __init__(self):
        self.routes: dict[tuple[str, str], list] = {}
        self.requests: list[dict] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def reply(self, method: str, path: str, *responses) -> None:
        self.routes[method, path] = list(responses)

    def api(self) -> ApiClient:
        config = Configuration()
        config.host = f"http://127.0.0.1:{self.server.server_port}"
        return ApiClient(config)

    def answer(self, method: str, path: str) -> tuple[int, object]:
        queue = self.routes.get((method, path))
        if not queue:
            return 404, status(404, "NotFound", f"no route for {method} {path}")
        return queue.pop(0) if len(queue) > 1 else queue[0]

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                fake.requests.append(
                    {
                        "method": self.command,
                        "path": url.path,
                        "query": parse_qs(url.query),
                        "body": json.loads(raw) if raw else None,
                    }
                )
                code, body = fake.answer(self.command, url.path)
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = _serve

            def log_message(self, *args):  # keep pytest's output clean
                pass

        return Handler


def status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def rayjob(name: str, **status_fields) -> dict:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": name, "namespace": "orch"},
        "status": status_fields,
    }


@pytest.fixture
def kube():
    fake = FakeKube()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def pods():
    spec = manifest.pod_spec(load_spec(JOB))
    spec.tracking.tracking_uri = POD_URI
    return spec


def k8s_run(store: str, pods, name: str):
    """An MLflow run as `orch submit --target k8s` leaves it, for the lifecycle calls."""
    run_id = tracking.start_run(pods, str(JOB), store)
    tracking.set_tags(store, run_id, {"orch.target": "k8s", "orch.k8s_namespace": "orch", "orch.rayjob": name})
    return MlflowClient(store).get_run(run_id)


# --- submitting ------------------------------------------------------------------------------


def test_launch_creates_the_run_then_the_rayjob(kube, store, pods):
    kube.reply("POST", RAYJOBS, (201, {"kind": "RayJob"}))
    run_id, name = kuberay.launch(
        pods,
        str(JOB),
        uri=store,
        pod_uri=POD_URI,
        namespace="orch",
        image="registry.example.com/orch:1",
        api=kube.api(),
    )
    (request,) = kube.requests
    assert request["method"] == "POST" and request["path"] == RAYJOBS
    assert request["body"] == manifest.rayjob_manifest(
        pods, run_id=run_id, image="registry.example.com/orch:1", tracking_uri=POD_URI, namespace="orch"
    )
    assert request["body"]["metadata"]["name"] == name == manifest.rayjob_name("resnet152-imagenet", run_id)
    assert f"--run-id {run_id}" in request["body"]["spec"]["entrypoint"]
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "RUNNING"  # the entrypoint in the pod attaches to it and ends it
    tags = run.data.tags
    assert (tags["orch.target"], tags["orch.k8s_namespace"], tags["orch.rayjob"]) == ("k8s", "orch", name)
    assert tags["orch.checkpoint_dir"] == f"/data/checkpoints/resnet152-imagenet-{run_id[:8]}"
    assert run.data.params["data.train"] == "/data/data/imagenet/train.beton"


@pytest.mark.parametrize(
    "code, reason, message",
    [
        (409, "AlreadyExists", 'rayjobs.ray.io "resnet152-imagenet-0a1b2c3d" already exists'),
        (
            403,
            "Forbidden",
            'rayjobs.ray.io is forbidden: User "alice" cannot create resource "rayjobs" '
            'in API group "ray.io" in the namespace "orch"',
        ),
    ],
)
def test_refused_rayjob_ends_the_run_failed(code, reason, message, kube, store, pods):
    kube.reply("POST", RAYJOBS, (code, status(code, reason, message)))
    with pytest.raises(OrchError) as error:
        kuberay.launch(pods, str(JOB), uri=store, pod_uri=POD_URI, namespace="orch", image="img", api=kube.api())
    text = str(error.value)
    assert "\n" not in text and str(code) in text and message in text
    if code == 403:
        assert "k8s/rbac.yaml" in text
    name = kube.requests[0]["body"]["metadata"]["name"]
    (run,) = MlflowClient(store).search_runs(
        [MlflowClient(store).get_experiment_by_name(pods.experiment).experiment_id],
        filter_string=f"tags.`orch.rayjob` = '{name}'",
    )
    assert run.info.status == "FAILED" and message in run.data.tags["orch.error"]


def test_follow_prints_each_change_and_reports_the_run(kube, store, pods, capsys):
    run = k8s_run(store, pods, "job-ok")
    run_id = run.info.run_id
    # What the entrypoint does in the pod: log the epoch, end the run.
    MlflowClient(store).log_metric(run_id, "val_top1_error", 0.25, step=0)
    tracking.set_tags(store, run_id, {"orch.best_checkpoint": "/data/checkpoints/x/epoch_0000"})
    tracking.end_run(store, run_id, "FINISHED")
    kube.reply(
        "GET",
        f"{RAYJOBS}/job-ok",
        (200, rayjob("job-ok", jobDeploymentStatus="Initializing")),
        (200, rayjob("job-ok", jobDeploymentStatus="Running", jobStatus="RUNNING")),
        (200, rayjob("job-ok", jobDeploymentStatus="Running", jobStatus="RUNNING")),
        (200, rayjob("job-ok", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")),
    )
    outcome = kuberay.follow(kube.api(), "orch", "job-ok", uri=store, run_id=run_id, poll_s=0.01)
    assert outcome.status == "FINISHED" and outcome.metrics["val_top1_error"] == 0.25
    assert outcome.best_checkpoint == "/data/checkpoints/x/epoch_0000"
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "RayJob job-ok: Initializing, job -",
        "RayJob job-ok: Running, job RUNNING",
        "RayJob job-ok: Complete, job SUCCEEDED",
    ]
    assert {r["method"] for r in kube.requests} == {"GET"} and len(kube.requests) == 4


def test_a_job_that_never_ran_ends_its_run_failed(kube, store, pods):
    run_id = k8s_run(store, pods, "job-bad").info.run_id
    message = "RayCluster job-bad-x1y2z failed: worker pods stayed Pending (Insufficient nvidia.com/gpu)"
    kube.reply("GET", f"{RAYJOBS}/job-bad", (200, rayjob("job-bad", jobDeploymentStatus="Failed", message=message)))
    with pytest.raises(JobFailed, match="Insufficient nvidia.com/gpu"):
        kuberay.follow(kube.api(), "orch", "job-bad", uri=store, run_id=run_id, poll_s=0.01)
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["orch.error"] == message


def test_a_deleted_rayjob_leaves_its_run_killed(kube, store, pods):
    run_id = k8s_run(store, pods, "job-gone").info.run_id
    outcome = kuberay.follow(kube.api(), "orch", "job-gone", uri=store, run_id=run_id, poll_s=0.01)
    assert outcome.status == "KILLED" == MlflowClient(store).get_run(run_id).info.status


# --- resuming -----------------------------------------------------------------------------------


def ended_k8s_run(store: str, pods, name: str):
    """A k8s run that trained epoch 0 and was stopped, as `orch resume` finds it."""
    run_id = k8s_run(store, pods, name).info.run_id
    tracking.set_tags(store, run_id, {"orch.epoch": 0, "orch.checkpoint_dir": "/data/checkpoints/x"})
    tracking.end_run(store, run_id, "KILLED", "stopped by `orch stop`")
    return MlflowClient(store).get_run(run_id)


def test_resume_creates_a_new_rayjob_that_continues_the_run(kube, store, pods, tmp_path):
    run = ended_k8s_run(store, pods, "resnet152-imagenet-first")
    run_id = run.info.run_id
    spec, _ = resume.run_spec(store, run, ["training.epochs=3"])
    resumed, pod_uri, _ = kuberay.prepare(spec, store, "orch")
    kube.reply("POST", RAYJOBS, (201, {"kind": "RayJob"}))
    name = resume.relaunch_on_k8s(
        store, run, resumed, ["training.epochs=3"], pod_uri=pod_uri, namespace="orch", image="img", api=kube.api()
    )
    (request,) = kube.requests
    body = request["body"]
    assert request["method"] == "POST" and body["metadata"]["name"] == name != "resnet152-imagenet-first"
    assert name == manifest.rayjob_name("resnet152-imagenet", run_id, 1) and name.endswith(f"{run_id[:8]}-r1")
    assert body["spec"]["entrypoint"].endswith(" --resume") and f"--run-id {run_id}" in body["spec"]["entrypoint"]
    assert body == manifest.rayjob_manifest(
        resumed, run_id=run_id, image="img", tracking_uri=POD_URI, namespace="orch", resume=1
    )
    run = MlflowClient(store).get_run(run_id)
    tags = run.data.tags
    assert run.info.status == "RUNNING" and "orch.error" not in tags  # the entrypoint ends it
    assert (tags["orch.target"], tags["orch.k8s_namespace"], tags["orch.rayjob"]) == ("k8s", "orch", name)
    assert tags["orch.resumes"] == "1" and tags["orch.epochs"] == "3"
    record = json.loads(
        Path(MlflowClient(store).download_artifacts(run_id, "resumes/resume_1.json", tmp_path)).read_text()
    )
    assert record["previous_job"]["orch.rayjob"] == "resnet152-imagenet-first" and record["job"]["orch.rayjob"] == name
    kube.reply("GET", f"{RAYJOBS}/{name}", (200, rayjob(name, jobDeploymentStatus="Initializing")))
    assert kuberay.job_status(run, api=kube.api())["rayjob"] == name  # orch status follows the new RayJob


@pytest.mark.parametrize(
    "args, fragment",
    [
        ([], "cluster.kubernetes.image: no training image; pass --image or set it"),
        (["--image", "img"], "tracking.tracking_uri: sqlite:///"),
        (["--image", "img", "--namespace", "Not_A_Name"], "--namespace: 'Not_A_Name' is not a Kubernetes namespace"),
    ],
)
def test_resume_refuses_before_touching_the_run(args, fragment, capsys, store, pods, monkeypatch):
    run = ended_k8s_run(store, pods, "job-r")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    with pytest.raises(SystemExit) as exit_info:
        main(["resume", run.info.run_id, *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("orch: error:")]
    assert fragment in line, line
    after = MlflowClient(store).get_run(run.info.run_id)
    assert after.info.status == "KILLED" and after.data.tags == run.data.tags


# --- status, logs, stop ------------------------------------------------------------------------


def test_job_status_reads_the_rayjob(kube, store, pods):
    run = k8s_run(store, pods, "job-s")
    kube.reply(
        "GET",
        f"{RAYJOBS}/job-s",
        (200, rayjob("job-s", jobDeploymentStatus="Running", jobStatus="RUNNING", rayClusterName="job-s-abcde")),
    )
    state = kuberay.job_status(run, api=kube.api())
    assert {k: state[k] for k in ("rayjob", "namespace", "jobStatus", "jobDeploymentStatus", "message")} == {
        "rayjob": "job-s",
        "namespace": "orch",
        "jobStatus": "RUNNING",
        "jobDeploymentStatus": "Running",
        "message": "",
    }
    assert [(r["method"], r["path"]) for r in kube.requests] == [("GET", f"{RAYJOBS}/job-s")]


def test_job_logs_read_the_head_pods_log_sidecar(kube, store, pods):
    run = k8s_run(store, pods, "job-l")
    kube.reply(
        "GET", f"{RAYJOBS}/job-l", (200, rayjob("job-l", jobDeploymentStatus="Running", rayClusterName="job-l-abcde"))
    )
    head = {
        "metadata": {"name": "job-l-abcde-head-q7x2p"},
        "spec": {"containers": [{"name": "ray-head"}, {"name": manifest.LOG_CONTAINER}]},
    }
    kube.reply(
        "GET",
        "/api/v1/namespaces/orch/pods",
        (200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [head]}),
    )
    kube.reply(
        "GET", "/api/v1/namespaces/orch/pods/job-l-abcde-head-q7x2p/log", (200, "epoch 0: val_top1_error 0.25\n")
    )
    assert kuberay.job_logs(run, tail_lines=100, api=kube.api()) == "epoch 0: val_top1_error 0.25\n"
    pods_query, log_query = kube.requests[1]["query"], kube.requests[2]["query"]
    assert pods_query["labelSelector"] == ["ray.io/cluster=job-l-abcde,ray.io/node-type=head"]
    assert log_query["container"] == [manifest.LOG_CONTAINER] and log_query["tailLines"] == ["100"]


def test_job_logs_of_a_deleted_rayjob_say_so(kube, store, pods):
    run = k8s_run(store, pods, "job-old")
    with pytest.raises(OrchError, match="no Ray cluster to read logs from"):
        kuberay.job_logs(run, api=kube.api())


@pytest.mark.parametrize("code, how", [(200, "deleted RayJob orch/job-x"), (404, "already gone")])
def test_stop_deletes_the_rayjob(code, how, kube, store, pods):
    run = k8s_run(store, pods, "job-x")
    body = {"kind": "Status", "status": "Success"} if code == 200 else status(404, "NotFound", "not found")
    kube.reply("DELETE", f"{RAYJOBS}/job-x", (code, body))
    assert how in kuberay.stop_job(run, api=kube.api())["how"]
    assert [(r["method"], r["path"]) for r in kube.requests] == [("DELETE", f"{RAYJOBS}/job-x")]


def test_stop_without_permission_is_one_line(kube, store, pods):
    run = k8s_run(store, pods, "job-y")
    kube.reply("DELETE", f"{RAYJOBS}/job-y", (403, status(403, "Forbidden", 'rayjobs.ray.io "job-y" is forbidden')))
    with pytest.raises(OrchError, match=r"deleting RayJob orch/job-y: 403 .*forbidden; the Role in k8s/rbac.yaml"):
        kuberay.stop_job(run, api=kube.api())


def test_a_run_from_elsewhere_is_refused(store, pods):
    run_id = tracking.start_run(pods, str(JOB), store)
    with pytest.raises(OrchError, match="not submitted to Kubernetes"):
        kuberay.job_status(MlflowClient(store).get_run(run_id), api=object())


# --- configuration and connection --------------------------------------------------------------


def test_no_kubeconfig_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(OrchError, match="no Kubernetes configuration: set KUBECONFIG or run in a pod"):
        kuberay.api_client()


def test_unreachable_api_is_one_line():
    config = Configuration()
    config.host = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(OrchError, match="the Kubernetes API did not answer") as error:
        kuberay.read_state(ApiClient(config), "orch", "job")
    assert "\n" not in str(error.value)


# --- the CLI refuses before anything exists ------------------------------------------------------


@pytest.mark.parametrize(
    "args, fragment",
    [
        ([], "cluster.kubernetes.image: no training image; pass --image or set it (build one from the Dockerfile)"),
        (["--image", "img"], "tracking.tracking_uri: sqlite:///"),
        (["--image", "img", "--set", "checkpoint.storage=/mnt/ckpt"], "checkpoint.storage: /mnt/ckpt is not on"),
    ],
)
def test_submit_refuses_before_any_run_exists(args, fragment, capsys, in_tmp, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{in_tmp / 'mlflow.db'}")
    with pytest.raises(SystemExit) as exit_info:
        main(["submit", str(JOB), "--target", "k8s", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("orch: error:")]
    assert fragment in line, line
    assert not (in_tmp / "mlflow.db").exists()
