"""Finding orch's runs in an MLflow store from what a user types: a run id or a unique run name."""

import os
import re

from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator.errors import OrchError
from orchestrator.tags import CHECKPOINT_DIR_TAG, is_sweep

_RUN_ID = re.compile(r"[0-9a-f]{32}")


def store_exists(uri: str) -> bool:
    """False for a sqlite file not written yet: reading it would create an empty store."""
    if uri.startswith("sqlite:///"):
        return os.path.exists(uri[len("sqlite:///") :])
    return True


def find_run(uri: str, ref: str):
    """The run with id `ref`, else the one run named `ref`; OrchError if none or several."""
    if not store_exists(uri):
        raise OrchError(f"unknown run {ref!r}: no MLflow store at {uri} (set MLFLOW_TRACKING_URI)")
    client = MlflowClient(uri)
    if _RUN_ID.fullmatch(ref):
        try:
            return client.get_run(ref)
        except MlflowException:
            pass
    name = ref.replace("'", "\\'")
    runs = _search(client, f"attributes.run_name = '{name}'")
    if not runs:
        raise OrchError(f"unknown run {ref!r}: no run has this id or name in {uri} (see `orch runs`)")
    if len(runs) > 1:
        ids = ", ".join(r.info.run_id for r in runs)
        raise OrchError(f"run name {ref!r} is ambiguous ({len(runs)} runs: {ids}); pass a run id")
    return runs[0]


def list_runs(uri: str) -> list:
    """orch's runs (those with a checkpoint folder, and sweeps' parents), newest first."""
    if not store_exists(uri):
        return []
    runs = _search(MlflowClient(uri), "")
    return [r for r in runs if CHECKPOINT_DIR_TAG in r.data.tags or is_sweep(r)]


def _search(client: MlflowClient, filter_string: str) -> list:
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    if not experiments:
        return []
    return client.search_runs(experiments, filter_string, order_by=["attributes.start_time DESC"], max_results=1000)
