"""orch's uses of Ray's private parts (orchestrator/ray_internals.py), called against the installed
Ray: when a Ray release moves or reshapes one, these fail, and the error names the Ray version."""

import json
import sys
from pathlib import Path

import pytest
import ray
from ray.exceptions import RayActorError

from orchestrator import ray_internals
from orchestrator.ray_internals import RayInternalChanged


def test_the_preemption_probe_tells_a_preempted_worker_from_a_failed_one():
    assert ray_internals.is_preempted(RayActorError(preempted=True)) is True
    assert ray_internals.is_preempted(RayActorError()) is False
    assert ray_internals.is_preempted(RuntimeError("a worker raised")) is False


def test_the_token_helpers_answer(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray_internals.use_cluster_token()
    assert isinstance(ray_internals.auth_headers(), dict)


@pytest.mark.slow
def test_a_real_runs_checkpoint_record_has_the_shape_orch_edits(trained_run):
    path = Path(trained_run["run_dir"]) / ray_internals.CHECKPOINT_RECORD
    record = json.loads(path.read_text())
    ray_internals.check_checkpoint_record(record)
    names = [r["checkpoint_dir_name"] for r in record["checkpoint_results"]]
    assert names and all(name.startswith("epoch_") for name in names)
    dropped = ray_internals.drop_from_checkpoint_record(record, {names[-1]})
    assert [r["checkpoint_dir_name"] for r in dropped["checkpoint_results"]] == names[:-1]
    assert len(dropped["checkpoint_report_indices"]) == len(names) - 1
    latest = dropped["latest_checkpoint_result"]
    assert latest is None or latest["checkpoint_dir_name"] != names[-1]


@pytest.mark.parametrize(
    "module",
    [
        "ray.train.v2._internal.execution.worker_group.poll",
        "ray._private.authentication.authentication_token_setup",
        "ray._private.authentication.http_token_authentication",
        "ray.train.v2._internal.execution.callback",
        "ray.train.v2._internal.execution.context",
    ],
)
def test_a_moved_internal_fails_loudly_naming_the_ray_version(module, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # as if Ray no longer had it
    call = {
        "poll": lambda: ray_internals.is_preempted(RuntimeError()),
        "authentication_token_setup": ray_internals.use_cluster_token,
        "http_token_authentication": ray_internals.auth_headers,
        "callback": ray_internals.callback_bases,
        "context": lambda: ray_internals.announce_preemption(0),
    }[module.rsplit(".", 1)[-1]]
    with pytest.raises(RayInternalChanged, match=f"Ray {ray.__version__} changed {module}"):
        call()


def test_a_key_value_store_without_its_calls_fails_loudly(monkeypatch):
    from ray.experimental import internal_kv

    monkeypatch.delattr(internal_kv, "_internal_kv_get")
    with pytest.raises(RayInternalChanged, match="internal_kv._internal_kv_get"):
        ray_internals.kv_get("orch/x")


def test_the_callback_bases_have_the_hooks_orch_overrides(monkeypatch):
    group, worker = ray_internals.callback_bases()
    assert callable(group.before_init_train_context) and callable(worker.after_init_train_context)
    assert callable(ray_internals.controller_callback_base().after_controller_state_update)
    # Where there is not exactly one CheckpointManager (a controller holds one), it says so.
    monkeypatch.setattr(ray_internals.gc, "get_objects", lambda: [])
    with pytest.raises(RayInternalChanged, match="0 found"):
        ray_internals.controller_checkpoint_manager()


def test_a_reshaped_checkpoint_record_fails_loudly():
    with pytest.raises(RayInternalChanged, match=rf"Ray {ray.__version__} changed the shape of .*Ray 9.9"):
        ray_internals.check_checkpoint_record({"ray_version": "9.9", "checkpoint_results": {}})
    with pytest.raises(RayInternalChanged, match="checkpoint_dir_name"):
        ray_internals.drop_from_checkpoint_record(
            {
                "checkpoint_results": [{"dir": "epoch_0000"}],
                "checkpoint_report_indices": [0],
                "pending_training_results": [],
                "pending_validation_specs": [],
            },
            {"epoch_0000"},
        )
