"""The notices between a run's driver and its workers (orchestrator/train/notices.py), and what a
step checkpoint's progress assumes of the workers that resume it: unit tests on the session's real
Ray (its key-value store) and a real sqlite MLflow store, no training."""

import time

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.spec import load_spec
from orchestrator.targets import resume
from orchestrator.train import notices
from orchestrator.train.checkpoint import data_layout, layout_mismatch

from job_fixtures import DEMO


def test_the_driver_hands_orch_stop_save_to_the_workers_through_ray(ray_cluster, mlflow_uri):
    from orchestrator import ray_internals

    client = MlflowClient(mlflow_uri)
    run_id = client.create_run(client.create_experiment("notices")).info.run_id
    key = notices.stop_key(run_id)
    ray_internals.kv_put(key, b"save")  # an earlier attempt's request, carried out
    with notices.StopRelay(mlflow_uri, run_id, interval=0.1):
        time.sleep(0.5)
        assert ray_internals.kv_get(key) is None  # a new attempt starts without it
        client.set_tag(run_id, notices.STOP_TAG, "save (asked now)")  # what `orch stop --save` does
        deadline = time.monotonic() + 30
        while ray_internals.kv_get(key) is None and time.monotonic() < deadline:
            time.sleep(0.1)
    assert ray_internals.kv_get(key) == b"save"
    ray_internals.kv_del(key)


def test_notices_are_checked_every_n_global_steps():
    check = notices.NoticeCheck(None, every=20)  # no process group: the check's collectives are no-ops
    assert [step for step in range(100) if check.due(step)] == [0, 20, 40, 60, 80]


def _meta(world_size=2, batch_size=100, seed=0) -> dict:
    return {"epoch": 1, "layout": {"world_size": world_size, "batch_size": batch_size, "seed": seed}}


@pytest.mark.parametrize(
    "meta, expected",
    [
        (_meta(), None),
        (_meta(world_size=4), "written with other data shards (4 -> 2 workers)"),
        (_meta(batch_size=50, seed=3), "50 -> 100 images per worker, 3 -> 0 data order seed"),
        ({"epoch": 1}, "does not say which world size, batch and seed wrote it"),
    ],
)
def test_a_step_checkpoint_carries_over_only_to_the_layout_that_wrote_it(meta, expected):
    spec = load_spec(DEMO, ["training.batch_size=100", "training.seed=0"])
    mismatch = layout_mismatch(meta, data_layout(spec, 2))
    assert mismatch is None if expected is None else expected in mismatch


def test_a_resume_under_another_world_size_says_so_in_one_line(mlflow_uri, capsys):
    client = MlflowClient(mlflow_uri)
    run_id = client.create_run(client.create_experiment("layout")).info.run_id
    spec = load_spec(DEMO, ["scaling.num_workers=1", "scaling.cpus_per_worker=2", "training.batch_size=100"])
    resume.tell_layout_change(mlflow_uri, run_id, "/ckpt/epoch_0001_step_000003", _meta(world_size=2), spec)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("orch: warning: /ckpt/epoch_0001_step_000003: written with other data shards (2 -> 1 ")
    assert line.endswith("epoch 1 starts again from its first batch")
    assert client.get_run(run_id).data.tags["orch.restore_warning"] == line.removeprefix("orch: warning: ")
