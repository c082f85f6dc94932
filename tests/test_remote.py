"""`orch submit --address` on a real two-node Ray cluster (both nodes on loopback) and a real
MLflow server: the user's path, run as the `orch` CLI in subprocesses.

Training is one epoch of ResNet-8 on 1,000 Fashion-MNIST images, validated on 1,000.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from job_fixtures import DEMO, SMALL_VAL, Notice, fault
from remote_fixtures import MlflowServer, RayNodes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_nodes():
    nodes = RayNodes(cpus_per_node=1)
    try:
        yield nodes.start(nodes=2)
    finally:
        nodes.stop()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server.start()
    finally:
        server.stop()


def orch(*args, uri: str, cwd, timeout=600, **env_vars) -> subprocess.CompletedProcess:
    """The CLI as a user runs it: no RAY_ADDRESS, no RAY_AUTH_MODE (orch finds the token)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "ORCH_TEST_FAULT")}
    env.update(env_vars, MLFLOW_TRACKING_URI=uri)
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


def job_sets(data, tmp, *extra) -> list[str]:
    sets = [
        f"data.train={data / 'train.beton'}",
        f"data.val={data / 'val.beton'}",
        "data.max_train_samples=1000",
        "training.epochs=1",
        "training.batch_size=100",
        "schedule.warmup_epochs=0",
        "model.arch=cifar_resnet8",
        "scaling.num_workers=2",
        "scaling.cpus_per_worker=1",
        "scaling.placement=SPREAD",
        f"checkpoint.storage={tmp / 'ckpt'}",
        "checkpoint.shared=true",
        "tracking.log_model=false",  # seconds per run; tests/test_dashboard.py checks the logged model
        *extra,
    ]
    return [arg for s in sets for arg in ("--set", s)]


def all_runs(uri: str) -> list:
    client = MlflowClient(uri)
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("orch: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def first_job(ray_nodes, mlflow_server, small_fashion, tmp_path_factory) -> dict:
    """One 1-epoch job submitted with --address, trained once for the tests that read it and then
    resume it (in this file's order): {proc, outcome, cwd}."""
    cwd = tmp_path_factory.mktemp("first-job")
    proc = orch(
        "submit",
        str(DEMO),
        *job_sets(small_fashion, cwd),
        "--address",
        ray_nodes.dashboard,
        "--output",
        "json",
        uri=mlflow_server.uri,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-5000:] + ray_nodes.logs()
    return {"proc": proc, "outcome": json.loads(proc.stdout), "cwd": cwd}


def test_two_workers_train_on_both_nodes(first_job, ray_nodes, mlflow_server):
    uri, proc, outcome, cwd = mlflow_server.uri, first_job["proc"], first_job["outcome"], first_job["cwd"]
    assert outcome["status"] == "FINISHED" and outcome["metrics"]["val_samples"] == SMALL_VAL
    assert "epoch   1/1" in proc.stderr

    run = MlflowClient(uri).get_run(outcome["run_id"])
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["orch.target"] == "ray" and tags["orch.ray_address"] == ray_nodes.dashboard
    workers = json.loads(tags["workers"])
    assert [w["rank"] for w in workers] == [0, 1]
    assert {w["node_id"] for w in workers} == {n["node_id"] for n in ray_nodes.alive_nodes()}
    assert outcome["best_checkpoint"].startswith(str(cwd / "ckpt"))

    status = json.loads(orch("status", outcome["run_id"], "--output", "json", uri=uri, cwd=cwd).stdout)
    assert status["ray_job_id"] == tags["orch.ray_job_id"] and status["status"] == "FINISHED"
    assert status["ray_job_status"] == "SUCCEEDED" and len(status["workers"]) == 2
    logs = orch("logs", outcome["run_id"], uri=uri, cwd=cwd)
    assert logs.returncode == 0 and "epoch   1/1" in logs.stdout, logs.stderr
    assert logs.stdout.rstrip().endswith(f"run {outcome['run_id']}: FINISHED")


def test_resume_continues_on_the_cluster_the_run_ran_on(first_job, ray_nodes, mlflow_server, tmp_path):
    """No --address: the run's own cluster trains its second epoch as a new Ray job, in the same run."""
    uri, run_id, cwd = mlflow_server.uri, first_job["outcome"]["run_id"], first_job["cwd"]
    client = MlflowClient(uri)
    first_job_id = client.get_run(run_id).data.tags["orch.ray_job_id"]
    proc = orch("resume", run_id, "--set", "training.epochs=2", "--output", "json", uri=uri, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-5000:] + ray_nodes.logs()
    outcome = json.loads(proc.stdout)
    assert outcome["run_id"] == run_id and outcome["status"] == "FINISHED"
    assert "epoch   2/2" in proc.stderr and "epoch   1/2" not in proc.stderr  # only the new epoch

    run = client.get_run(run_id)
    tags = run.data.tags
    assert sorted(m.step for m in client.get_metric_history(run_id, "val_top1_error")) == [0, 1]
    assert (tags["orch.target"], tags["orch.ray_address"]) == ("ray", ray_nodes.dashboard)
    assert tags["orch.ray_job_id"] == f"{first_job_id}-r1" and tags["orch.resumes"] == "1"
    assert tags["orch.resumed_from"].endswith("epoch_0000")
    nodes = {n["node_id"] for n in ray_nodes.alive_nodes()}
    assert {w["node_id"] for w in json.loads(tags["workers"])} == nodes and tags["orch.driver_node_id"] in nodes
    record = json.loads(Path(client.download_artifacts(run_id, "resumes/resume_1.json", tmp_path)).read_text())
    assert record["previous_job"]["orch.ray_job_id"] == first_job_id
    assert record["job"]["orch.ray_job_id"] == tags["orch.ray_job_id"]

    status = json.loads(orch("status", run_id, "--output", "json", uri=uri, cwd=cwd).stdout)
    assert status["ray_job_id"] == tags["orch.ray_job_id"] and status["ray_job_status"] == "SUCCEEDED"
    assert status["status"] == "FINISHED" and status["epoch"] == 1


def test_orch_stop_ends_a_detached_job_killed(ray_nodes, mlflow_server, small_fashion, tmp_path):
    """The job holds at a known step (the fault hook) while `orch stop` ends it."""
    uri = mlflow_server.uri
    notice = Notice(tmp_path)
    sets = job_sets(small_fashion, tmp_path, "training.epochs=20")
    proc = orch(
        "submit",
        str(DEMO),
        *sets,
        "--address",
        ray_nodes.dashboard,
        "--detach",
        "--output",
        "json",
        uri=uri,
        cwd=tmp_path,
        ORCH_TEST_FAULT=fault("hold", epoch=0, step=1, rank=0, notify=notice.path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = json.loads(proc.stdout)["run_id"]
    assert json.loads(proc.stdout)["status"] in ("SUBMITTED", "RUNNING")
    assert notice.wait().startswith("hold epoch 0 step 1 rank 0")
    client = MlflowClient(uri)
    stopped = orch("stop", run_id, "--output", "json", uri=uri, cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert json.loads(stopped.stdout)["status"] == "KILLED"
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    status = json.loads(orch("status", run_id, "--output", "json", uri=uri, cwd=tmp_path).stdout)
    assert status["ray_job_status"] == "STOPPED"


def test_a_job_that_cannot_start_ends_its_run_failed(ray_nodes, mlflow_server, small_fashion, tmp_path):
    proc = orch(
        "submit",
        str(DEMO),
        *job_sets(small_fashion, tmp_path),
        "--address",
        ray_nodes.dashboard,
        uri=mlflow_server.uri,
        cwd=tmp_path,
        ORCH_RAY_PYTHON="/nonexistent/python",
    )
    assert proc.returncode == 1
    assert "FAILED: /bin/sh:" in error_line(proc) and "/nonexistent/python" in error_line(proc)  # the shell's word
    run_id = error_line(proc).split()[3]
    run = MlflowClient(mlflow_server.uri).get_run(run_id)
    assert run.info.status == "FAILED" and "exit code 127" in run.data.tags["orch.error"]


def test_more_gpus_than_the_cluster_has_fail_in_seconds(ray_nodes, mlflow_server, small_fashion, tmp_path):
    before = len(all_runs(mlflow_server.uri))
    started = time.monotonic()
    proc = orch(
        "submit",
        str(DEMO),
        *job_sets(small_fashion, tmp_path, "scaling.use_gpu=true"),
        "--address",
        ray_nodes.dashboard,
        uri=mlflow_server.uri,
        cwd=tmp_path,
    )
    assert time.monotonic() - started < 20
    assert proc.returncode == 2
    assert "2 workers x 1 GPU = 2 GPU, but the Ray cluster at" in error_line(proc)
    assert "has 0 GPU (2 nodes)" in error_line(proc)
    assert len(all_runs(mlflow_server.uri)) == before


def test_a_file_store_on_two_nodes_is_refused(ray_nodes, small_fashion, tmp_path):
    store = tmp_path / "mlflow.db"
    proc = orch(
        "submit",
        str(DEMO),
        *job_sets(small_fashion, tmp_path),
        "--address",
        ray_nodes.dashboard,
        uri=f"sqlite:///{store}",
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "tracking.tracking_uri" in error_line(proc) and "mlflow server" in error_line(proc)
    assert not store.exists()


def test_node_local_checkpoints_on_two_nodes_are_refused(ray_nodes, mlflow_server, small_fashion, tmp_path):
    proc = orch(
        "submit",
        str(DEMO),
        *job_sets(small_fashion, tmp_path, "checkpoint.shared=false"),
        "--address",
        ray_nodes.dashboard,
        uri=mlflow_server.uri,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "checkpoint.storage" in error_line(proc) and "checkpoint.shared=true" in error_line(proc)
