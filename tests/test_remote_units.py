"""The remote target's decisions, without a cluster: what a cluster must have, what a multi-node
job must not use, what travels with the job, and how the entrypoint reads its spec."""

import base64
import json
import sys
import time

import pytest
from click.testing import CliRunner

from orchestrator.errors import ResourceError, SpecError, last_line
from orchestrator.spec import load_spec, preflight
from orchestrator.spec.schema import ScalingSpec
from orchestrator.targets import cluster, entrypoint, ray_cluster
from orchestrator.train.epoch_logger import worker_placement

from test_submit import DEMO

WHERE = "the Ray cluster at http://head:8265"


def test_missing_gpus_are_named_with_the_amounts():
    nodes = [{"CPU": 8.0}, {"CPU": 8.0}]
    with pytest.raises(ResourceError) as info:
        cluster.check_resources(ScalingSpec(num_workers=4, use_gpu=True), nodes, where=WHERE)
    message = str(info.value)
    assert "4 workers x 1 GPU = 4 GPU, but the Ray cluster at http://head:8265 has 0 GPU (2 nodes)" in message
    assert "scaling.use_gpu=false" in message


def test_every_resource_that_falls_short_is_named_at_once():
    nodes = [{"CPU": 2.0}, {"CPU": 2.0}]
    with pytest.raises(ResourceError) as info:
        cluster.check_resources(ScalingSpec(num_workers=4, use_gpu=True, cpus_per_worker=2), nodes, where=WHERE)
    message = str(info.value)
    assert "4 workers x 2 CPU = 8 CPU, but the Ray cluster at http://head:8265 has 4 CPU" in message
    assert "4 workers x 1 GPU = 4 GPU, but the Ray cluster at http://head:8265 has 0 GPU (2 nodes)" in message
    assert "scaling.cpus_per_worker or scaling.gpus_per_worker" in message and "\n" not in message


def test_a_worker_must_fit_on_one_node():
    nodes = [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}]
    cluster.check_resources(ScalingSpec(num_workers=2, use_gpu=True, cpus_per_worker=2), nodes, where=WHERE)
    with pytest.raises(ResourceError, match="one worker needs 1 CPU, 2 GPU on one node, but the largest node"):
        cluster.check_resources(ScalingSpec(num_workers=1, use_gpu=True, gpus_per_worker=2), nodes, where=WHERE)


@pytest.fixture
def spec(tmp_path):
    return load_spec(DEMO, [f"checkpoint.storage={tmp_path / 'ckpt'}"])


@pytest.mark.parametrize("uri", ["sqlite:////tmp/mlflow.db", "file:///tmp/mlruns", "/tmp/mlruns"])
def test_a_file_store_is_refused_on_several_nodes(spec, uri):
    preflight.check_multi_node(spec, uri, nodes=1)  # one node: the file is where the driver is
    with pytest.raises(SpecError, match=r"tracking.tracking_uri: .* 2 nodes .*mlflow server"):
        preflight.check_multi_node(spec, uri, nodes=2)


@pytest.mark.parametrize(
    "storage, shared, ok",
    [
        ("/scratch/ckpt", False, False),
        ("file:///scratch/ckpt", False, False),
        ("/nfs/ckpt", True, True),
        ("file:///nfs/ckpt", True, True),
        ("s3://bucket/ckpt", False, True),
        ("gs://bucket/ckpt", False, True),
    ],
)
def test_checkpoints_must_be_where_every_node_reaches(spec, storage, shared, ok):
    spec.checkpoint.storage, spec.checkpoint.shared = storage, shared
    if ok:
        preflight.check_multi_node(spec, "http://mlflow:5000", nodes=3)
        return
    with pytest.raises(SpecError, match=r"checkpoint.storage: .*checkpoint.shared=true"):
        preflight.check_multi_node(spec, "http://mlflow:5000", nodes=3)


def test_the_job_carries_the_source_tree_and_the_spec(spec, monkeypatch):
    env = ray_cluster.runtime_env(spec, "http://mlflow:5000")
    assert env["working_dir"] == str(ray_cluster.project_root())
    assert "/data" in env["excludes"] and ".venv" in env["excludes"]
    decoded = json.loads(base64.b64decode(env["env_vars"]["ORCH_SPEC_B64"]))
    assert decoded == spec.model_dump(mode="json")
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    command = ray_cluster.entrypoint_command("r1", "http://mlflow:5000", "http://10.0.0.5:8265")
    assert command == "python -m orchestrator.targets.entrypoint --run-id r1 --tracking-uri http://mlflow:5000"
    assert ray_cluster.cluster_python("http://127.0.0.1:8265") == sys.executable
    monkeypatch.setenv("ORCH_RAY_PYTHON", "/opt/conda/bin/python")
    assert ray_cluster.cluster_python("http://10.0.0.5:8265") == "/opt/conda/bin/python"


def test_the_entrypoint_reads_the_spec_from_b64_or_a_file(spec, tmp_path):
    text = json.dumps(spec.model_dump(mode="json"))
    assert entrypoint.read_spec(None, base64.b64encode(text.encode()).decode()) == spec
    (tmp_path / "spec.json").write_text(text)
    assert entrypoint.read_spec(str(tmp_path / "spec.json"), None) == spec
    with pytest.raises(SpecError, match="no spec"):
        entrypoint.read_spec(None, None)
    with pytest.raises(SpecError, match="not base64"):
        entrypoint.read_spec(None, "%%%")
    raw = spec.model_dump(mode="json")
    raw["training"]["epochz"] = 4
    bad = base64.b64encode(json.dumps(raw).encode()).decode()
    with pytest.raises(SpecError, match="training.epochz: unknown key"):
        entrypoint.read_spec(None, bad)


def test_the_entrypoint_refuses_an_unknown_run(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    with pytest.raises(SystemExit) as exit_info:
        entrypoint.main(["--run-id", "0" * 32, "--tracking-uri", uri, "--spec-b64", "e30="])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"orch: error: --run-id {'0' * 32}: no such run")


def test_workers_tag_needs_every_rank():
    reports = [
        {"worker_rank": 1, "worker_hostname": "b", "worker_node_id": "n2", "epoch": 0},
        {"worker_rank": 0, "worker_hostname": "a", "worker_node_id": "n1", "epoch": 0},
    ]
    assert worker_placement(reports) == [
        {"rank": 0, "hostname": "a", "node_id": "n1"},
        {"rank": 1, "hostname": "b", "node_id": "n2"},
    ]
    assert worker_placement([{"epoch": 1}, {"epoch": 1}]) is None


def test_an_unreachable_head_fails_in_seconds(fashion_mnist, tmp_path):
    from orchestrator.cli.main import _attach_commands, cli

    _attach_commands()
    started = time.monotonic()
    result = CliRunner().invoke(
        cli,
        [
            "submit",
            str(DEMO),
            "--address",
            "http://127.0.0.1:9",
            "--set",
            f"data.train={fashion_mnist / 'train.beton'}",
            "--set",
            f"data.val={fashion_mnist / 'val.beton'}",
        ],
    )
    assert time.monotonic() - started < 20  # refused at first contact: retried for 10 s (targets/retry.py)
    assert "cannot reach the Ray Jobs API at http://127.0.0.1:9: connection refused for 10 s" in str(result.exception)
    assert "is the head running? (--address / RAY_ADDRESS)" in str(result.exception)


def test_an_address_in_ray_address_does_not_replace_the_given_one(monkeypatch):
    seen = {}

    class FakeClient:
        def __init__(self, address):
            import os

            seen["address"], seen["env"] = address, os.environ.get("RAY_ADDRESS")

    monkeypatch.setenv("RAY_ADDRESS", "http://elsewhere:8265")
    monkeypatch.setattr("ray.job_submission.JobSubmissionClient", FakeClient)
    ray_cluster.client("http://head:8265")
    assert seen == {"address": "http://head:8265", "env": None}
    import os

    assert os.environ["RAY_ADDRESS"] == "http://elsewhere:8265"


def test_status_of_a_ray_run_whose_cluster_is_gone(spec, tmp_path, capsys, monkeypatch):
    from orchestrator.cli.main import main
    from orchestrator.runs.tracking import set_tags, start_run

    monkeypatch.setenv("ORCH_RAY_RETRY_S", "0")  # refused at once: the default's 10 s is tested above

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    run_id = start_run(spec, str(DEMO), uri)
    set_tags(
        uri,
        run_id,
        {
            "orch.target": "ray",
            "orch.ray_address": "http://127.0.0.1:9",
            "orch.ray_job_id": "demo-1",
            "orch.checkpoint_dir": str(tmp_path / "c"),
        },
    )
    main(["status", run_id, "--tracking-uri", uri, "--output", "json"])
    info = json.loads(capsys.readouterr().out)
    assert info["status"] == "RUNNING" and info["ray_job_id"] == "demo-1"
    assert info["job_error"].startswith("cannot reach the Ray Jobs API at http://127.0.0.1:9")
    assert info["where"] == "ray (http://127.0.0.1:9, job demo-1)"
    with pytest.raises(SystemExit) as exit_info:
        main(["stop", run_id, "--tracking-uri", uri])
    assert exit_info.value.code == 2 and "cannot reach" in capsys.readouterr().err


def test_the_cause_of_a_failed_job_skips_rays_own_lines():
    log = (
        "Ray job j FAILED: Job entrypoint command failed with exit code 127, last available logs:\n"
        "2026-11-23 21:23:28,550\tINFO job_manager.py:581 -- Runtime env is setting up.\n"
        "/bin/sh: 1: /nonexistent/python: not found\n"
        "Running entrypoint for job j: /nonexistent/python -m orchestrator.targets.entrypoint\n"
    )
    assert last_line(log, "no cause recorded") == "/bin/sh: 1: /nonexistent/python: not found"
    assert last_line("", "no cause recorded") == "no cause recorded"


@pytest.mark.parametrize(
    "recorded, args",
    [
        ({"orch.target": "ray", "orch.ray_address": "http://127.0.0.1:9", "orch.ray_job_id": "demo-1"}, []),
        ({"orch.target": "local"}, ["--address", "http://127.0.0.1:9"]),
    ],
    ids=["the-runs-cluster", "--address"],
)
def test_resume_on_an_unreachable_cluster_leaves_the_run_as_it_was(
    recorded, args, spec, mlflow_uri, capsys, monkeypatch
):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("ORCH_RAY_RETRY_S", "0")  # refused at once: the default's 10 s is tested above

    from orchestrator.cli.main import main
    from orchestrator.runs.tracking import end_run, set_tags, start_run

    run_id = start_run(spec, str(DEMO), mlflow_uri)
    set_tags(mlflow_uri, run_id, {**recorded, "orch.epoch": 0, "orch.checkpoint_dir": spec.checkpoint.storage})
    end_run(mlflow_uri, run_id, "FAILED", "the head went away")
    before = MlflowClient(mlflow_uri).get_run(run_id)
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        main(["resume", run_id, "--set", "training.epochs=2", *args])
    assert time.monotonic() - started < 20
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    (line,) = err.strip().splitlines()
    assert line.startswith("orch: error: cannot reach the Ray Jobs API at http://127.0.0.1:9") and "--address" in line
    after = MlflowClient(mlflow_uri).get_run(run_id)
    assert after.info.status == "FAILED" and after.data.tags == before.data.tags
    assert MlflowClient(mlflow_uri).list_artifacts(run_id, "resumes") == []
