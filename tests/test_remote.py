"""`orch submit --address` on a real two-node Ray cluster (both nodes on loopback) logging to the
tracking server as k8s/mlflow.yaml runs it (MLflow on PostgreSQL): the user's path, run as the
`orch` CLI in subprocesses.

Training is ResNet-8 on 1,000 Fashion-MNIST images an epoch, validated on 1,000. One run pays
for the stop, resume and two-node tests: submitted detached, stopped by `orch stop` in its
second epoch, then continued by `orch resume` on the cluster to its end; each test reads its
part. Two tiny jobs submitted at once (one on each node) then ride out a stop of the tracking server, and `orch
report` and `orch ensemble` read them back from it. Last, the worker node is drained for
preemption and replaced while a job trains.
"""

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient

from orchestrator import ray_internals
from orchestrator.runs.tracking import EPOCH_METRICS

from job_fixtures import DEMO, SMALL_VAL, Notice, fault
from remote_fixtures import RayNodes, all_runs, ended_runs, error_line, job_sets, orch, orch_in_parallel, wait_until

pytestmark = pytest.mark.slow


def submit_detached(nodes: RayNodes, sets: list[str], *, uri: str, cwd, fault_hook: str | None = None):
    """`orch submit DEMO SETS --address CLUSTER --detach --output json`, with the fault hook's
    $ORCH_TEST_FAULT when given."""
    args = ("submit", str(DEMO), *sets, "--address", nodes.dashboard, "--detach", "--output", "json")
    return orch(*args, uri=uri, cwd=cwd, **({"ORCH_TEST_FAULT": fault_hook} if fault_hook else {}))


@pytest.fixture(scope="module")
def ray_nodes(mlflow_launched):
    """Two nodes, started while the session's tracking server boots."""
    nodes = RayNodes(cpus_per_node=1)
    try:
        yield nodes.start(nodes=2)
    finally:
        nodes.stop()


@pytest.fixture(scope="module")
def stopped_job(ray_nodes, mlflow_server, small_fashion, tmp_path_factory) -> dict:
    """One 20-epoch job submitted with --address --detach that holds at a known step of epoch 1
    (the fault hook, after epoch 0's checkpoint) while `orch stop` ends it: {submitted, notice,
    stopped, run, status, cwd}. The resumed_job fixture continues the same run."""
    uri, cwd = mlflow_server.uri, tmp_path_factory.mktemp("remote-job")
    notice = Notice(cwd)
    submitted = submit_detached(
        ray_nodes,
        job_sets(small_fashion, cwd, "training.epochs=20"),
        uri=uri,
        cwd=cwd,
        fault_hook=fault("hold", epoch=1, step=1, rank=0, notify=notice.path),
    )
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    run_id = json.loads(submitted.stdout)["run_id"]
    said = notice.wait()
    stopped = orch("stop", run_id, "--output", "json", uri=uri, cwd=cwd)
    assert stopped.returncode == 0, stopped.stderr[-3000:] + ray_nodes.logs()
    run = MlflowClient(uri).get_run(run_id)
    status = json.loads(orch("status", run_id, "--output", "json", uri=uri, cwd=cwd).stdout)
    return {"submitted": submitted, "notice": said, "stopped": stopped, "run": run, "status": status, "cwd": cwd}


@pytest.fixture(scope="module")
def resumed_job(stopped_job, ray_nodes, mlflow_server) -> dict:
    """The stopped run continued by `orch resume` without --address and with training.epochs=2
    (its own cluster trains its second epoch as a new Ray job), then read back by `orch status`
    and `orch logs`: {proc, outcome, run_id, first_job_id, stopped_tags, status, logs, cwd}."""
    uri, cwd, run = mlflow_server.uri, stopped_job["cwd"], stopped_job["run"]
    run_id = run.info.run_id
    proc = orch("resume", run_id, "--set", "training.epochs=2", "--output", "json", uri=uri, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-5000:] + ray_nodes.logs()
    status, logs = orch_in_parallel(("status", run_id, "--output", "json"), ("logs", run_id), uri=uri, cwd=cwd)
    return {
        "proc": proc,
        "outcome": json.loads(proc.stdout),
        "run_id": run_id,
        "first_job_id": run.data.tags["orch.ray_job_id"],
        "stopped_tags": run.data.tags,
        "status": json.loads(status.stdout),
        "logs": logs,
        "cwd": cwd,
    }


def test_orch_stop_ends_a_detached_job_killed(stopped_job):
    """The job holds at a known step (the fault hook) while `orch stop` ends it."""
    assert json.loads(stopped_job["submitted"].stdout)["status"] in ("SUBMITTED", "RUNNING")
    assert stopped_job["notice"].startswith("hold epoch 1 step 1 rank 0")
    assert json.loads(stopped_job["stopped"].stdout)["status"] == "KILLED"
    assert stopped_job["run"].info.status == "KILLED"
    assert stopped_job["status"]["ray_job_status"] == "STOPPED"


def test_resume_continues_on_the_cluster_the_run_ran_on(resumed_job, ray_nodes, mlflow_server, tmp_path):
    """No --address: the run's own cluster trains its second epoch as a new Ray job, in the same run."""
    uri, run_id, proc = mlflow_server.uri, resumed_job["run_id"], resumed_job["proc"]
    first_job_id, client = resumed_job["first_job_id"], MlflowClient(uri)
    outcome = resumed_job["outcome"]
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

    status = resumed_job["status"]
    assert status["ray_job_id"] == tags["orch.ray_job_id"] and status["ray_job_status"] == "SUCCEEDED"
    assert status["status"] == "FINISHED" and status["epoch"] == 1


def test_two_workers_train_on_both_nodes(resumed_job, ray_nodes, mlflow_server):
    """The run's jobs (the first and its resume) each spread two workers over the two nodes; the
    run ends FINISHED as `orch status` and `orch logs` read it back from the cluster."""
    uri, proc, outcome, cwd = mlflow_server.uri, resumed_job["proc"], resumed_job["outcome"], resumed_job["cwd"]
    assert outcome["status"] == "FINISHED" and outcome["metrics"]["val_samples"] == SMALL_VAL
    assert "epoch   2/2" in proc.stderr

    run = MlflowClient(uri).get_run(outcome["run_id"])
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["orch.target"] == "ray" and tags["orch.ray_address"] == ray_nodes.dashboard
    nodes = {n["node_id"] for n in ray_nodes.alive_nodes()}
    for job_tags in (resumed_job["stopped_tags"], tags):  # the first job's epoch 0, the resume's epoch 1
        workers = json.loads(job_tags["workers"])
        assert [w["rank"] for w in workers] == [0, 1]
        assert {w["node_id"] for w in workers} == nodes
    assert outcome["best_checkpoint"].startswith(str(cwd / "ckpt"))

    status, logs = resumed_job["status"], resumed_job["logs"]
    assert status["ray_job_id"] == tags["orch.ray_job_id"] and status["status"] == "FINISHED"
    assert status["ray_job_status"] == "SUCCEEDED" and len(status["workers"]) == 2
    assert logs.returncode == 0 and "epoch   2/2" in logs.stdout, logs.stderr
    assert logs.stdout.rstrip().endswith(f"run {outcome['run_id']}: FINISHED")


@pytest.fixture(scope="module")
def quick_submits(ray_nodes, mlflow_server, small_fashion, tmp_path_factory) -> dict:
    """The submissions that end at once, run at once (each is mostly its `orch` process's
    imports): {name: (proc, its folder)}, the MLflow server's run ids before and after them
    all, and the Ray jobs they made."""
    uri, address = mlflow_server.uri, ray_nodes.dashboard
    folders = {name: tmp_path_factory.mktemp(name) for name in ("cannot-start", "gpus", "file-store", "local-ckpt")}
    submits = {
        "cannot-start": ((), uri, {"ORCH_RAY_PYTHON": "/nonexistent/python"}),
        "gpus": (("scaling.use_gpu=true",), uri, {}),
        "file-store": ((), f"sqlite:///{folders['file-store'] / 'mlflow.db'}", {}),
        "local-ckpt": (("checkpoint.shared=false",), uri, {}),
    }

    def submit(name: str):
        extra, store, env = submits[name]
        cwd = folders[name]
        sets = job_sets(small_fashion, cwd, *extra)
        return name, (orch("submit", str(DEMO), *sets, "--address", address, uri=store, cwd=cwd, **env), cwd)

    before, jobs_before = {r.info.run_id for r in all_runs(uri)}, ray_nodes.job_ids()
    with ThreadPoolExecutor(len(submits)) as pool:
        done = dict(pool.map(submit, submits))
    after = {r.info.run_id for r in all_runs(uri)}
    new_jobs = ray_nodes.job_ids() - jobs_before
    return {**done, "runs_before": before, "runs_after": after, "new_jobs": new_jobs, "uri": uri}


def test_a_job_that_cannot_start_ends_its_run_failed(quick_submits, mlflow_server):
    proc, _ = quick_submits["cannot-start"]
    assert proc.returncode == 1
    assert "FAILED: /bin/sh:" in error_line(proc) and "/nonexistent/python" in error_line(proc)  # the shell's word
    run_id = error_line(proc).split()[3]
    run = MlflowClient(mlflow_server.uri).get_run(run_id)
    assert run.info.status == "FAILED" and "exit code 127" in run.data.tags["orch.error"]


def test_more_gpus_than_the_cluster_has_are_refused_before_a_job_starts(quick_submits):
    """Refused from the cluster's resources before anything is submitted: no Ray job, no run."""
    proc, _ = quick_submits["gpus"]
    assert proc.returncode == 2
    assert "2 workers x 1 GPU = 2 GPU, but the Ray cluster at" in error_line(proc)
    assert "has 0 GPU (2 nodes)" in error_line(proc)
    # No run for it (nor for the refusals below): the one new run is the job that could not start.
    cannot_start = error_line(quick_submits["cannot-start"][0]).split()[3]
    assert quick_submits["runs_after"] - quick_submits["runs_before"] == {cannot_start}
    # One new Ray job, the one that could not start (its id names its run): the refusals made none.
    (job_id,) = quick_submits["new_jobs"]
    assert MlflowClient(quick_submits["uri"]).get_run(cannot_start).data.tags["orch.ray_job_id"] == job_id


def test_a_file_store_on_two_nodes_is_refused(quick_submits):
    proc, cwd = quick_submits["file-store"]
    assert proc.returncode == 2
    assert "tracking.tracking_uri" in error_line(proc) and "mlflow server" in error_line(proc)
    assert not (cwd / "mlflow.db").exists()


def test_node_local_checkpoints_on_two_nodes_are_refused(quick_submits):
    proc, _ = quick_submits["local-ckpt"]
    assert proc.returncode == 2
    assert "checkpoint.storage" in error_line(proc) and "checkpoint.shared=true" in error_line(proc)


# --- jobs at once, and a tracking server that goes away ------------------------------------------

OUTAGE_S = 10  # the tracking server stays down at least this long (then boots, ~10 s more)
AT_ONCE = 2  # one per node: a third would wait for a CPU, then train alone (30-40 s more)


@pytest.fixture(scope="module")
def jobs_at_once(ray_nodes, mlflow_server, small_fashion, tmp_path_factory) -> dict:
    """Two 1-worker jobs of 2 epochs on 300 images, submitted at once with --detach (they train
    at the same time, one per node), with the tracking server stopped in the middle: job 0's rank 0
    waits at the start of its epoch 1 (the fault hook writes to a FIFO, which blocks until the
    test reads it) until its epoch 0 is logged and the server is down, then trains that epoch;
    the server comes back only once Ray has recorded the epoch-1 checkpoint, after which the
    job's controller logs epoch 1 to the server that is down (and the job ends). The last job
    logs its model. {procs, run_ids, runs, outage, cwd}."""
    uri, cwd = mlflow_server.uri, tmp_path_factory.mktemp("at-once")
    notice = Notice(cwd)

    def submit(i: int):
        sets = job_sets(
            small_fashion,
            cwd,
            *("training.epochs=2", "data.max_train_samples=300", "scaling.num_workers=1", "scaling.placement=PACK"),
            *(f"training.seed={i}", f"tracking.run_name=at-once-{i}", "tracking.log_every_n_steps=1"),
            *(("tracking.log_model=true",) if i == AT_ONCE - 1 else ()),
            "tracking.system_metrics=false",
        )
        hook = fault("mark", epoch=1, step=0, rank=0, notify=notice.path) if i == 0 else None
        return submit_detached(ray_nodes, sets, uri=uri, cwd=cwd, fault_hook=hook)

    with ThreadPoolExecutor(AT_ONCE) as pool:
        procs = list(pool.map(submit, range(AT_ONCE)))
    assert all(p.returncode == 0 for p in procs), [p.stderr[-2000:] for p in procs]
    run_ids = [json.loads(p.stdout)["run_id"] for p in procs]
    client = MlflowClient(uri)
    run_dir = client.get_run(run_ids[0]).data.tags["orch.checkpoint_dir"]
    wait_until(lambda: client.get_metric_history(run_ids[0], "val_top1_error"), "job 0's epoch 0 logged")
    outage = stop_the_server_through_an_epoch(mlflow_server, notice, run_dir, epoch=1)
    runs = ended_runs(uri, run_ids, ray_nodes)
    return {"procs": procs, "run_ids": run_ids, "runs": runs, "outage": outage, "cwd": cwd}


def stop_the_server_through_an_epoch(server, notice: Notice, run_dir: str, epoch: int) -> dict:
    """Stop the tracking server, let the held job train `epoch`, and start the server again once
    Ray has recorded that epoch's checkpoint (its controller logs the epoch right after) and
    OUTAGE_S have passed: {notice, recorded_while_down, down_s}."""
    record, name = os.path.join(run_dir, ray_internals.CHECKPOINT_RECORD), f"epoch_{epoch:04d}"

    def recorded() -> bool:
        try:
            with open(record) as f:
                return name in ray_internals.recorded_checkpoints(json.load(f))
        except (OSError, ValueError):
            return False  # not written yet, or being replaced

    server.stop()
    stopped = time.monotonic()
    try:
        said = notice.wait()  # the job goes on into `epoch`
        wait_until(recorded, f"Ray's record of {name} in {run_dir}")
        recorded_while_down = server.proc.poll() is not None
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
    finally:
        server.launch()
    server.wait_until_up()
    return {"notice": said, "recorded_while_down": recorded_while_down, "down_s": time.monotonic() - stopped}


def epoch_steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_jobs_submitted_at_once_all_finish_with_each_epoch_logged_once(
    jobs_at_once, ray_nodes, mlflow_server, postgres
):
    client = MlflowClient(mlflow_server.uri)
    runs, run_ids = jobs_at_once["runs"], jobs_at_once["run_ids"]
    assert [r.info.status for r in runs] == ["FINISHED"] * AT_ONCE, [r.data.tags.get("orch.error") for r in runs]
    for run in runs:
        run_id = run.info.run_id
        for key in ("train_loss", "val_top1_error", "val_samples"):
            assert epoch_steps(client, run_id, key) == [0, 1], (run.info.run_name, key)
        assert run.data.tags["orch.epoch"] == "1" and run.data.metrics["val_samples"] == SMALL_VAL
        assert client.get_metric_history(run_id, "step/train_loss")  # its curves inside epochs
    nodes = {w["node_id"] for r in runs for w in json.loads(r.data.tags["workers"])}
    assert nodes == {n["node_id"] for n in ray_nodes.alive_nodes()}  # at the same time, one on each node
    with psycopg.connect(postgres.uri) as db:  # the server's store is PostgreSQL itself
        rows = db.execute("SELECT run_uuid, status FROM runs WHERE run_uuid = ANY(%s)", (run_ids,)).fetchall()
    assert sorted(rows) == sorted((run_id, "FINISHED") for run_id in run_ids)


def test_a_tracking_server_stopped_mid_job_loses_no_epoch(jobs_at_once, mlflow_server):
    """Job 0's epoch 1 was trained, checkpointed and handed to the controller to log while the
    server was down; every epoch of it is logged once, all of its epoch metrics."""
    outage = jobs_at_once["outage"]
    assert outage["notice"].startswith("mark epoch 1 step 0 rank 0")
    assert outage["recorded_while_down"] and outage["down_s"] >= OUTAGE_S
    client = MlflowClient(mlflow_server.uri)
    run = jobs_at_once["runs"][0]
    assert run.info.status == "FINISHED", run.data.tags.get("orch.error")
    for key in EPOCH_METRICS:
        assert epoch_steps(client, run.info.run_id, key) == [0, 1], key


def test_the_logged_model_is_stored_through_the_server(jobs_at_once, mlflow_server):
    """--serve-artifacts: the model's files went through the server to its artifacts destination."""
    client = MlflowClient(mlflow_server.uri)
    run = jobs_at_once["runs"][AT_ONCE - 1]
    (output,) = run.outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert (model.source_run_id, model.status) == (run.info.run_id, LoggedModelStatus.READY)
    assert model.artifact_location.startswith("mlflow-artifacts:")  # the server's, not a path of the job's
    assert "MLmodel" in {a.path for a in client.list_logged_model_artifacts(model.model_id)}
    assert any(model.model_id in str(path) for path in (mlflow_server.root / "artifacts").rglob("MLmodel"))


def test_report_and_ensemble_read_the_runs_from_the_server(jobs_at_once, ray_nodes, mlflow_server, tmp_path):
    uri, run_ids = mlflow_server.uri, jobs_at_once["run_ids"]
    with ThreadPoolExecutor(2) as pool:
        reported = pool.submit(
            orch, "report", ",".join(run_ids), "--out", str(tmp_path), "-o", "json", uri=uri, cwd=tmp_path
        )
        ensembled = pool.submit(
            orch,
            *("ensemble", "--runs", ",".join(run_ids[:2]), "--workers", "2", "-o", "json"),
            uri=uri,
            cwd=tmp_path,
            RAY_ADDRESS=f"127.0.0.1:{ray_nodes.gcs_port}",  # the cluster's CPUs, not a Ray of its own
        )
    report, ensemble = reported.result(), ensembled.result()
    assert report.returncode == 0, report.stderr[-3000:]
    outcome = json.loads(report.stdout)
    (row,) = outcome["rows"]  # the same job but for seeds: one configuration
    assert row["n"] == AT_ONCE and sorted(row["run_ids"]) == sorted(run_ids)
    client = MlflowClient(uri)
    assert "report/report.html" in {a.path for a in client.list_artifacts(outcome["run_id"], "report")}

    assert ensemble.returncode == 0, ensemble.stderr[-3000:]
    result = json.loads(ensemble.stdout)
    assert [m["run_id"] for m in result["members"]] == run_ids[:2]
    assert result["ensemble"]["samples"] == SMALL_VAL
    recorded = client.get_run(result["run_id"])
    assert recorded.info.status == "FINISHED" and "ensemble.json" in {
        a.path for a in client.list_artifacts(recorded.info.run_id)
    }


def test_a_node_drained_for_preemption_is_a_preemption_not_a_failure(ray_nodes, mlflow_server, small_fashion, tmp_path):
    """Ray's own notice, as clusters deliver it: in the middle of epoch 1 of a 2-worker job with
    the default training.max_failures (0), the worker node is drained for preemption with a
    deadline 20 s away (the GCS DrainNode call of `ray drain-node --reason
    DRAIN_NODE_REASON_PREEMPTION`, made here by orch's own Kubernetes preStop hook), stopped 20 s
    later, and a replacement node joins. Every rank waits at step 2 until the notice has reached
    it (the fault hook), so the workers answer it there with a step checkpoint; then the rank on
    the drained node makes no progress (a long epoch would not end before its node goes) and the
    other waits for it in the step's all_reduce, which fails when the node goes. The run
    continues from that checkpoint to FINISHED,
    logs each epoch once, and records one preemption and no failure. (Runs last in this
    module: it replaces the cluster's worker node.)"""
    uri, cwd = mlflow_server.uri, tmp_path
    notice = Notice(cwd)
    submitted = submit_detached(
        ray_nodes,
        job_sets(small_fashion, cwd, "training.epochs=2", "training.notice_every_n_steps=1"),
        uri=uri,
        cwd=cwd,
        fault_hook=fault("await_preemption", epoch=1, step=2, notify=notice.path),
    )
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    run_id = json.loads(submitted.stdout)["run_id"]
    assert all(line.startswith("await_preemption epoch 1 step 2") for line in notice.wait_for(2))
    (worker_node,) = [n["node_id"] for n in ray_nodes.alive_nodes() if not n["is_head_node"]]
    drain = subprocess.run(
        [sys.executable, "-m", "orchestrator.targets.pod_drain", "--address", f"127.0.0.1:{ray_nodes.gcs_port}"]
        + ["--node-id", worker_node, "--deadline-s", "20", "--no-wait"],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    assert drain.returncode == 0 and "drained for preemption" in drain.stdout, drain.stderr[-3000:]
    time.sleep(20)
    ray_nodes.stop_node("worker1")
    ray_nodes.add_node("worker2")
    client, deadline = MlflowClient(uri), time.monotonic() + 300
    while client.get_run(run_id).info.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(2)

    run = client.get_run(run_id)
    tags = run.data.tags
    assert run.info.status == "FINISHED", tags.get("orch.error", "") + ray_nodes.logs()
    assert sorted(m.step for m in client.get_metric_history(run_id, "val_top1_error")) == [0, 1]
    step_checkpoint = f"{tags['orch.checkpoint_dir']}/epoch_0001_step_000002"
    assert tags["orch.restored_from"] == tags["orch.step_checkpoint"] == step_checkpoint
    assert tags["orch.preemptions"] == "1" and "orch.failures" not in tags
    (preemption,) = json.loads(tags["orch.preemption_log"])
    assert preemption["nodes"] == [worker_node] and preemption["continued_from"] == step_checkpoint
    assert preemption["deadline_ms"] and preemption["noticed"]
