"""The Ray orch starts on this machine: lean by default (no dashboard, no metric export; Ray
Train's preemption watcher stays on, as everywhere), the full Ray with ORCH_RAY_DASHBOARD=1. (Jobs train on the lean
Ray throughout the suite: the session's Ray of tests/conftest.py is started by cluster.connect().)

Each test's probe starts its own Ray in a fresh Python process, as `orch submit` does (the two
probes run at once); the session's Ray of the test process is not joined (ray.init() joins only
what $RAY_ADDRESS or `ray start` names).
"""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from orchestrator.targets import cluster

from job_fixtures import ROOT

PROBE = """
import json, os, sys, urllib.request
import ray
from orchestrator.targets import cluster
cluster.connect()
context = ray.init(ignore_reinit_error=True)

@ray.remote(num_cpus=0)
def ray_worker_env():
    return {name: os.environ.get(name) for name in cluster.LEAN_RAY_ENV}

report = {"dashboard_url": context.dashboard_url, "worker_env": ray.get(ray_worker_env.remote()),
          "driver_env": {name: os.environ.get(name) for name in cluster.LEAN_RAY_ENV}}
if context.dashboard_url:  # any HTTP answer will do: Ray's token auth answers 401 without a token
    try:
        url = f"http://{context.dashboard_url}/api/version"
        report["dashboard_status"] = urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as exc:
        report["dashboard_status"] = exc.code
print(json.dumps(report))
"""


def _probe(folder, **env) -> dict:
    environment = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", *cluster.LEAN_RAY_ENV)}
    environment.update(env, MLFLOW_TRACKING_URI=f"sqlite:///{folder / 'mlflow.db'}", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=600, cwd=folder, env=environment
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> dict:
    """Both probes at once (each Ray is its own, in its own process): {"lean": report, "full": report}."""
    kinds = {"lean": {}, "full": {"ORCH_RAY_DASHBOARD": "1"}}
    folders = {kind: tmp_path_factory.mktemp(kind) for kind in kinds}
    with ThreadPoolExecutor(len(kinds)) as pool:
        return dict(zip(kinds, pool.map(lambda kind: _probe(folders[kind], **kinds[kind]), kinds)))


@pytest.mark.slow
def test_orch_starts_a_lean_ray(probes):
    report = probes["lean"]
    assert not report["dashboard_url"]
    assert report["worker_env"]["RAY_enable_metrics_collection"] == "0"  # the raylet's workers inherit it
    assert report["driver_env"] == cluster.LEAN_RAY_ENV  # Ray Train passes its flags on to the controller
    assert "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER" not in report["driver_env"]  # drain notices reach the workers


@pytest.mark.slow
def test_orch_ray_dashboard_starts_the_full_ray(probes):
    report = probes["full"]
    assert report["dashboard_url"] and report["dashboard_status"] in (200, 401)
    assert set(report["worker_env"].values()) == {None}
    assert set(report["driver_env"].values()) == {None}


def test_an_address_is_joined_as_it_is(monkeypatch):
    """A cluster orch joins keeps its own settings: connect() sets nothing for it."""
    calls = []
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.ray, "init", lambda **kwargs: calls.append(kwargs))
    for name in cluster.LEAN_RAY_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    cluster.connect()
    monkeypatch.delenv("RAY_ADDRESS")
    cluster.connect("127.0.0.1:6379")
    assert [c["address"] for c in calls] == [None, "127.0.0.1:6379"]
    assert not any(name in os.environ for name in cluster.LEAN_RAY_ENV)
