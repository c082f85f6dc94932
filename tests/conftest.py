"""Shared fixtures: real Fashion-MNIST in FFCV files, one real local Ray for the whole session,
a real MLflow store, the tracking server as k8s/mlflow.yaml runs it (MLflow on PostgreSQL), and a
run trained once and shared by the tests that only read it.

Fixed costs dominate this suite on 2 cores (starting Ray ~10 s, a trainer ~20 s, an MLflow store
~2 s, importing torch/ray/mlflow in a subprocess ~5 s), so each is paid once where tests allow:
one Ray per test process, MLflow stores copied from one made empty once, training only
where a test needs what training writes, and validation on 1,000 images except in the one
exactness test (test_submit.py), which checks every one of the 10,000.
"""

import os
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from job_fixtures import DEMO, FASHION, SMALL_TRAIN, SMALL_VAL, small_job, write_fashion_subset
from server_fixtures import MlflowServer, Postgres, PostgresUnavailable

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Ray Train's controller polls its workers every 2 s; a test's job of a few seconds an epoch
# waits less for each report and for its end at 0.5 s. Inherited by every Ray and `orch`
# process the tests start.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


@pytest.fixture(scope="session")
def fashion_mnist(tmp_path_factory) -> Path:
    """Fashion-MNIST as train.beton (60,000) and val.beton (10,000), written once."""
    if not (FASHION / "t10k-images-idx3-ubyte.gz").exists():
        pytest.fail("Fashion-MNIST is missing: apt-get install dataset-fashion-mnist (make setup does)")
    from data_pipeline import write_fashion_mnist

    out = tmp_path_factory.mktemp("fashion-mnist")
    write_fashion_mnist(FASHION, out)
    return out


@pytest.fixture(scope="session")
def small_fashion(tmp_path_factory) -> Path:
    """Fashion-MNIST's first 2,000 training and first 1,000 test images, written by `orch data
    prepare`'s own writer: jobs train and validate on it in seconds."""
    return write_fashion_subset(tmp_path_factory.mktemp("fashion-small"), SMALL_TRAIN, SMALL_VAL)


@pytest.fixture(scope="session")
def ray_cluster():
    """The Ray orch itself starts (lean: no dashboard), once for every test in this process.
    In-process `orch` commands and run_local() join it; a test that needs its own Ray starts it
    in a subprocess."""
    import ray

    from orchestrator.targets import cluster

    cluster.connect()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_address(ray_cluster) -> str:
    """The session Ray's address, for `orch` subprocesses that should join it (RAY_ADDRESS)."""
    return ray_cluster.get_runtime_context().gcs_address


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store with its tables made: creating them costs seconds on these
    machines, copying the file nothing."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def fresh_store(empty_store: Path, folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(empty_store, folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


@pytest.fixture
def mlflow_uri(empty_store, tmp_path, monkeypatch) -> str:
    """A store of this test's own, as $MLFLOW_TRACKING_URI."""
    uri = fresh_store(empty_store, tmp_path / "mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def session_store(empty_store, tmp_path_factory) -> str:
    """A store shared by the session's read-only users of `trained_run`."""
    return fresh_store(empty_store, tmp_path_factory.mktemp("session-mlflow"))


@pytest.fixture(scope="session")
def trained_run(ray_cluster, small_fashion, session_store, tmp_path_factory) -> dict:
    """One real run, trained once (1 worker with two loader threads, 2 epochs of 2,000 images,
    no training.deterministic): {run_id, checkpoint (its best), run_dir, sets}. Tests only read
    it; a run of the same spec logs the same metrics (tests/test_reproducible.py trains it again,
    tests/test_recovery.py stops and resumes it)."""
    from orchestrator.spec import load_spec
    from orchestrator.targets.local import run_local

    storage = tmp_path_factory.mktemp("trained")
    job = small_job(small_fashion, storage, workers=1)
    sets = job + [
        "tracking.log_model=true",  # tests/test_dashboard.py finds it on the run
        "experiment=orch-trained",
        "tracking.run_name=member-seed0",
        f"tracking.tracking_uri={session_store}",
    ]
    outcome = run_local(load_spec(DEMO, sets), str(DEMO))
    assert outcome.status == "FINISHED"
    run = MlflowClient(session_store).get_run(outcome.run_id)
    return {
        "run_id": outcome.run_id,
        "checkpoint": Path(outcome.best_checkpoint),
        "run_dir": run.data.tags["orch.checkpoint_dir"],
        "sets": job,  # its training spec's overrides of the demo job
    }


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server on 127.0.0.1 for the tracking server. Where it cannot start, the tests
    that need it fail saying why: they are never skipped."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("psycopg is missing, which `mlflow server` needs for postgresql://: make setup (orch[server])")
    server = None
    try:
        server = Postgres()
        yield server.start()
    except PostgresUnavailable as exc:
        pytest.fail(f"PostgreSQL could not start, so neither can the tracking server: {exc}")
    finally:
        if server:
            server.stop()


@pytest.fixture(scope="session")
def mlflow_launched(postgres, tmp_path_factory) -> MlflowServer:
    """The tracking server's process (k8s/mlflow.yaml's, on `postgres`), still booting: a test
    module starts its Ray meanwhile. Shared by the session: tests keep to their own runs."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), postgres)
    try:
        yield server.launch()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(mlflow_launched) -> MlflowServer:
    """The tracking server, answering at `.uri`."""
    return mlflow_launched.wait_until_up()


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path
