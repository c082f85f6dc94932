"""Shared fixtures: real Fashion-MNIST in FFCV files, a real local Ray, a real MLflow store.

The Ray cluster is started once per test module (starting Ray costs ~10 s on 2 cores) and
Fashion-MNIST is written once per session.
"""

import os
from pathlib import Path

import pytest

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def fashion_mnist(tmp_path_factory) -> Path:
    """Fashion-MNIST as train.beton (60,000) and val.beton (10,000), written once."""
    if not (FASHION_MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.fail("Fashion-MNIST is missing: apt-get install dataset-fashion-mnist (make setup does)")
    from data_pipeline import write_fashion_mnist

    out = tmp_path_factory.mktemp("fashion-mnist")
    write_fashion_mnist(FASHION_MNIST, out)
    return out


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray with 2 CPUs and its dashboard, shared by the tests of one module."""
    import ray

    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False,
             logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


os.environ.setdefault("RAY_DEDUP_LOGS", "0")
