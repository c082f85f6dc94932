"""A checkpoint as an MLflow PyTorch model of its run: MLflow 3's LoggedModel, the run's output
(the run page's Logged models), registrable; registered when a name is given.

The model is saved as a PyTorch exported program (`pt2`, torch.export), which
mlflow.pytorch.load_model loads with torch alone, without orch's code. It takes float32 images
N x 3 x H x W at the checkpoint's preprocessing size, normalized as in training (mean and std
on the 0-255 scale, in the model's metadata with the classes), and returns N x classes logits.
The input example holds two images (the mean image: zeros once normalized): torch.export fixes
a dimension whose example size is 1, so a one-image example would make a model for batches of
one only. The model's metrics are the run's epoch metrics at the checkpoint's epoch.
"""

import tempfile
from importlib import metadata
from pathlib import Path

import mlflow.pytorch
import numpy as np
import torch
from mlflow.entities import LoggedModelOutput, Metric
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

from orchestrator.models import build_model
from orchestrator.recovery.checkpoints import fetch, is_uri, read_meta, verify_checksums
from orchestrator.runs.tracking import EPOCH_METRICS
from orchestrator.tags import EPOCH_TAG, MODEL_CHECKPOINT_TAG
from orchestrator.train.checkpoint import load_model_state

EXAMPLE_IMAGES = 2


def log_checkpoint(uri: str, run_id: str, checkpoint: str, register_as: str | None = None) -> str | None:
    """Log `checkpoint` (a directory or a URI) as the run's model and return the model's id;
    with `register_as`, also a new version of that registered model. None when the run logged
    that checkpoint already (a resumed run whose best checkpoint did not change)."""
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    if checkpoint in logged_checkpoints(client, run):
        return None
    local = fetch(checkpoint) if is_uri(checkpoint) else Path(checkpoint)
    meta = read_meta(local)
    verify_checksums(local)
    model = load_network(local, meta)
    logged = client.create_logged_model(
        run.info.experiment_id,
        name=meta["arch"],
        source_run_id=run_id,
        tags={MODEL_CHECKPOINT_TAG: checkpoint, EPOCH_TAG: meta.get("epoch")},
        model_type="image-classifier",
    )
    try:
        _save_and_upload(client, logged, model, meta)
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=int(meta.get("epoch") or 0))])
        _link_metrics(client, run_id, logged.model_id, int(meta.get("epoch") or 0))
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    client.finalize_logged_model(logged.model_id, "READY")
    if register_as:
        register(client, register_as, logged)
    return logged.model_id


def logged_checkpoints(client: MlflowClient, run) -> set[str]:
    """The checkpoints the run's logged models were made from."""
    outputs = run.outputs.model_outputs if run.outputs else []
    return {client.get_logged_model(output.model_id).tags.get(MODEL_CHECKPOINT_TAG) for output in outputs}


def load_network(checkpoint: Path, meta: dict) -> torch.nn.Module:
    """The checkpoint's network with its weights, in eval mode, on the CPU."""
    options = meta.get("spec", {}).get("model", {}).get("options", {}) or {}
    model = build_model(meta["arch"], int(meta["num_classes"]), **options)
    model.load_state_dict(load_model_state(checkpoint))
    return model.eval()


def input_example(meta: dict) -> np.ndarray:
    size = int(meta["preprocess"]["size"])
    return np.zeros((EXAMPLE_IMAGES, 3, size, size), dtype=np.float32)


def signature(meta: dict) -> ModelSignature:
    """Images in (any number, 3 x size x size, float32), logits out (one per class)."""
    size, classes = int(meta["preprocess"]["size"]), int(meta["num_classes"])
    images = TensorSpec(np.dtype(np.float32), (-1, 3, size, size))
    logits = TensorSpec(np.dtype(np.float32), (-1, classes))
    return ModelSignature(inputs=Schema([images]), outputs=Schema([logits]))


def _save_and_upload(client: MlflowClient, logged, model: torch.nn.Module, meta: dict) -> None:
    """Save the model in MLflow's format into a temporary folder and upload it to the logged
    model's artifacts. The requirements are given, not inferred (which takes seconds)."""
    description = Model(
        artifact_path=logged.artifact_location,
        model_uuid=logged.model_id,
        model_id=logged.model_id,
        run_id=logged.source_run_id,
    )
    with tempfile.TemporaryDirectory(prefix="orch-model-") as tmp, torch.no_grad():
        path = Path(tmp) / "model"
        mlflow.pytorch.save_model(
            model,
            str(path),
            mlflow_model=description,
            signature=signature(meta),
            input_example=input_example(meta),
            pip_requirements=[f"torch=={metadata.version('torch')}", f"mlflow=={metadata.version('mlflow')}"],
            metadata=_model_metadata(meta),
            serialization_format="pt2",
        )
        client.log_model_artifacts(logged.model_id, str(path))


def _model_metadata(meta: dict) -> dict:
    """What a user of the model needs besides the network: how to feed it and what it answers."""
    return {
        "arch": meta["arch"],
        "classes": list(meta.get("classes") or []),
        "preprocess": meta["preprocess"],
        "epoch": meta.get("epoch"),
        "metrics": meta.get("metrics", {}),
    }


def _link_metrics(client: MlflowClient, run_id: str, model_id: str, epoch: int) -> None:
    """The run's epoch metrics at the checkpoint's epoch become the model's too (MLflow keeps the
    run's history as it is: the same points are not logged twice)."""
    linked = [
        Metric(key, point.value, point.timestamp, point.step, model_id=model_id, run_id=run_id)
        for key in EPOCH_METRICS
        for point in client.get_metric_history(run_id, key)
        if point.step == epoch
    ]
    if linked:
        client.log_batch(run_id, metrics=linked)


def register(client: MlflowClient, name: str, logged):
    """A new version of registered model `name` (created if missing) from the logged model. Its
    source is the model's artifact location: a `models:/ID` source is looked up in the process's
    default MLflow store, not the client's (MLflow 3.17's sqlalchemy registry)."""
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    return client.create_model_version(
        name, logged.artifact_location, run_id=logged.source_run_id, model_id=logged.model_id
    )
