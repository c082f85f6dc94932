"""What a researcher sees of a run in the MLflow dashboard: experiments shown as model training,
the run's training and validation data as dataset inputs, its description and result in the
note, its best checkpoint as a logged model; and the same read over the REST API the UI reads,
from `orch ui` (MLflow's server) on the session's store.

The trained run is the session's (tests/conftest.py: cifar_resnet8 on 2,000 Fashion-MNIST
images, 1,000 for validation, 2 epochs); the model tests that need no training use a
checkpoint made by hand.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow.pytorch
import numpy as np
import pytest
import requests
import torch
from mlflow.entities import LoggedModelStatus
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from orchestrator.errors import SpecError
from orchestrator.runs import model_logging, run_record, tracking
from orchestrator.spec import load_spec

from eval_fixtures import make_checkpoint
from job_fixtures import DEMO, SMALL_TRAIN, SMALL_VAL
from remote_fixtures import free_port

KIND = "mlflow.experimentKind"
NOTE = "mlflow.note.content"
slow = pytest.mark.slow


class OrchUi:
    """`orch ui` on a store, as a user starts it from a terminal (its own process group, which
    Ctrl-C signals): MLflow's UI and the REST API it reads."""

    def __init__(self, uri: str, cwd: Path):
        self.port = free_port()
        self.uri, self.store = f"http://127.0.0.1:{self.port}", uri
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli.main", "ui", "--port", str(self.port), "--tracking-uri", uri],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=open(cwd / "ui.log", "w"),
            text=True,
            start_new_session=True,
        )

    def wait_until_up(self, timeout_s: float = 120) -> "OrchUi":
        said = self.proc.stdout.readline().strip()
        assert said == f"MLflow UI for {self.store} at {self.uri} (Ctrl-C stops it)", said
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"orch ui exited with {self.proc.returncode}"
            try:
                if requests.get(f"{self.uri}/health", timeout=2).ok:
                    return self
            except requests.RequestException:
                time.sleep(0.5)
        raise AssertionError(f"{self.uri} did not answer within {timeout_s:.0f} s")

    def stop(self) -> int | None:
        """Ctrl-C to its process group; its exit code (None if it had to be killed)."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return None


@pytest.fixture(scope="session")
def dashboard_server(session_store, tmp_path_factory):
    """`orch ui` on the session's store, launched before the run trains (when this module is the
    first to need it) so that it boots meanwhile; stopped by the test that reads it."""
    server = OrchUi(session_store, tmp_path_factory.mktemp("orch-ui"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def trained(dashboard_server, trained_run, session_store) -> dict:
    """The session's trained run as MLflow has it: {run, client, models (its logged models)}."""
    client = MlflowClient(session_store)
    run = client.get_run(trained_run["run_id"])
    models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    return {**trained_run, "run": run, "client": client, "models": list(models)}


def test_an_existing_experiment_is_marked_model_training_unless_a_kind_was_chosen(mlflow_uri):
    client = MlflowClient(mlflow_uri)
    existing = client.create_experiment("made-elsewhere")
    assert KIND not in client.get_experiment(existing).tags
    assert tracking.experiment_id(client, "made-elsewhere") == existing
    assert client.get_experiment(existing).tags[KIND] == "custom_model_development"

    created = tracking.experiment_id(client, "made-by-orch")
    assert client.get_experiment(created).tags[KIND] == "custom_model_development"

    client.set_experiment_tag(existing, KIND, "genai_development")  # someone's choice stays
    tracking.experiment_id(client, "made-elsewhere")
    assert client.get_experiment(existing).tags[KIND] == "genai_development"
    client.set_experiment_tag(existing, KIND, "genai_development_inferred")  # the UI's guess does not
    tracking.experiment_id(client, "made-elsewhere")
    assert client.get_experiment(existing).tags[KIND] == "custom_model_development"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("tracking.log_every_n_steps=0", "tracking.log_every_n_steps: Input should be greater than or equal to 1"),
        ("tracking.log_model=perhaps", "tracking.log_model: Input should be a valid boolean"),
        ("tracking.register_model=team/resnet", "tracking.register_model: String should match pattern"),
    ],
)
def test_bad_tracking_fields_are_one_line_spec_errors(override, fragment):
    with pytest.raises(SpecError) as err:
        load_spec(DEMO, [override])
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_registering_needs_a_logged_model():
    with pytest.raises(SpecError, match="register_model needs log_model: true"):
        load_spec(DEMO, ["tracking.register_model=resnet", "tracking.log_model=false"])
    spec = load_spec(DEMO, ["tracking.log_every_n_steps=25", "tracking.register_model=resnet"])
    fields = spec.tracking
    assert (fields.log_every_n_steps, fields.log_model, fields.register_model) == (25, True, "resnet")


def test_a_files_digest_changes_with_its_start_or_its_time_and_reads_no_more(tmp_path):
    path = tmp_path / "train.beton"
    path.write_bytes(bytes(3 << 20))
    first = run_record.file_digest(str(path))
    assert run_record.file_digest(str(path)) == first and len(first) == 16

    def rewrite(offset: int) -> str:
        """Change one byte at `offset`, leaving the file's time as it was."""
        stat = path.stat()
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(b"x")
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        return run_record.file_digest(str(path))

    assert rewrite(2 << 20) == first  # past the first MiB: not read
    changed = rewrite(0)  # FFCV's header and tables
    assert changed != first
    os.utime(path, ns=(1, 1))
    assert run_record.file_digest(str(path)) not in (first, changed)  # its time


@slow
def test_the_trained_runs_experiment_is_model_training(trained):
    experiment = trained["client"].get_experiment(trained["run"].info.experiment_id)
    assert experiment.tags[KIND] == "custom_model_development"


@slow
def test_the_trained_run_has_its_training_and_validation_data(trained, small_fashion):
    inputs = {i.tags[0].value: i.dataset for i in trained["run"].inputs.dataset_inputs}
    assert sorted(inputs) == ["training", "validation"]
    for context, key, samples in (("training", "train", SMALL_TRAIN), ("validation", "val", SMALL_VAL)):
        dataset = inputs[context]
        path = str(small_fashion / f"{key}.beton")
        assert dataset.name == f"fashion-mnist-{key}"
        assert (dataset.source_type, json.loads(dataset.source)) == ("local", {"uri": path})
        assert dataset.digest == run_record.file_digest(path)
        profile = json.loads(dataset.profile)
        assert (profile["num_samples"], profile["num_classes"], profile["image_size"]) == (samples, 10, 28)
        assert "mlflow_tensorspec" in json.loads(dataset.schema)
    assert trained["run"].inputs.dataset_inputs[0].tags[0].key == "mlflow.data.context"


@slow
def test_the_note_says_what_ran_and_how_it_ended(trained):
    note = trained["run"].data.tags[NOTE]
    metrics = trained["run"].data.metrics
    assert note.startswith("### CIFAR ResNet-8 (shortcut A): `cifar_resnet8`")
    assert "batch 100 per worker x 1 worker = 100" in note and "train.beton` (2,000 samples)" in note
    assert "the local Ray on" in note and "(target local)" in note
    result = note.split("#### Result")[1]
    assert f"best top-1 error **{metrics['best_val_top1_error']:.2f}%**" in result
    assert f"in epoch {int(metrics['best_epoch']) + 1} (best_epoch {int(metrics['best_epoch'])};" in result
    assert "2 epochs trained" in result
    assert "FINISHED" in result


@slow
def test_the_best_checkpoint_is_the_runs_logged_model(trained):
    (model,) = trained["models"]
    run = trained["run"]
    assert (model.name, model.status, model.source_run_id) == (
        "cifar_resnet8",
        LoggedModelStatus.READY,
        run.info.run_id,
    )
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
    assert model.tags["orch.checkpoint"] == str(trained["checkpoint"])
    best_epoch = int(run.data.metrics["best_epoch"])
    top1 = {m.key: m.value for m in model.metrics}["val_top1_error"]
    assert top1 == tracking.epoch_history(trained["client"].tracking_uri, run.info.run_id)[best_epoch]

    network = mlflow.pytorch.load_model(model.artifact_location)
    example = Model.load(model.artifact_location).load_input_example(model.artifact_location)
    assert example.shape == (2, 3, 28, 28)
    logits = network(torch.from_numpy(example))
    assert logits.shape == (2, 10)
    images = torch.randn(5, 3, 28, 28)  # any number of images
    expected = model_logging.load_network(
        trained["checkpoint"], json.loads((trained["checkpoint"] / "meta.json").read_text())
    )
    with torch.no_grad():
        assert torch.allclose(network(images), expected(images), atol=1e-5)
    assert np.isfinite(logits.detach().numpy()).all()


@slow
def test_the_dashboards_rest_api_shows_the_datasets_and_the_model(trained, dashboard_server):
    """The REST API the UI reads, from `orch ui` (MLflow's server) on the session's store."""
    server = dashboard_server.wait_until_up()
    try:
        api = f"{server.uri}/api/2.0/mlflow"
        run_id = trained["run_id"]
        run = requests.get(f"{api}/runs/get", params={"run_id": run_id}, timeout=30).json()["run"]
        inputs = run["inputs"]["dataset_inputs"]
        assert sorted(i["tags"][0]["value"] for i in inputs) == ["training", "validation"]
        assert {i["dataset"]["name"] for i in inputs} == {"fashion-mnist-train", "fashion-mnist-val"}
        assert all(json.loads(i["dataset"]["profile"])["num_samples"] > 0 for i in inputs)
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert "`cifar_resnet8`" in tags[NOTE]
        (output,) = run["outputs"]["model_outputs"]

        experiment_id = run["info"]["experiment_id"]
        found = requests.post(
            f"{api}/logged-models/search",
            json={"experiment_ids": [experiment_id], "filter": f"source_run_id = '{run_id}'"},
            timeout=30,
        ).json()["models"]
        assert [m["info"]["model_id"] for m in found] == [output["model_id"]]
        model = requests.get(f"{api}/logged-models/{output['model_id']}", timeout=30).json()["model"]["info"]
        assert (model["name"], model["status"], model["source_run_id"]) == (
            "cifar_resnet8",
            "LOGGED_MODEL_READY",
            run_id,
        )

        experiment = requests.get(f"{api}/experiments/get", params={"experiment_id": experiment_id}, timeout=30)
        kinds = [t["value"] for t in experiment.json()["experiment"]["tags"] if t["key"] == KIND]
        assert kinds == ["custom_model_development"]
    finally:
        assert server.stop() is not None  # Ctrl-C stops it


# Models logged outside training (after the trained run's, torch.export is warm then).
def _finished_run(uri: str) -> str:
    client = MlflowClient(uri)
    run_id = client.create_run(tracking.experiment_id(client, "models")).info.run_id
    client.set_terminated(run_id, "FINISHED")
    return run_id


def test_a_finished_runs_model_is_registered_under_the_spec_name(mlflow_uri, tmp_path):
    checkpoint = make_checkpoint(
        tmp_path / "epoch_0003", arch="cifar_resnet8", augment="cifar", size=28, val=tmp_path / "val.beton", epoch=3
    )
    spec = load_spec(DEMO, ["model.arch=cifar_resnet8", "tracking.register_model=fashion-resnet8"])
    run_id = _finished_run(mlflow_uri)
    run_record.finish(spec, mlflow_uri, run_id, "FINISHED", str(checkpoint))

    client = MlflowClient(mlflow_uri)
    tags = client.get_run(run_id).data.tags
    assert "orch.model_warning" not in tags and "orch.record_warning" not in tags
    (version,) = client.search_model_versions("name = 'fashion-resnet8'")
    (output,) = client.get_run(run_id).outputs.model_outputs
    assert (version.run_id, version.version, output.step) == (run_id, 1, 3)
    assert version.source == client.get_logged_model(output.model_id).artifact_location

    run_record.finish(spec, mlflow_uri, run_id, "FINISHED", str(checkpoint))  # a resumed run, the same best
    assert len(client.get_run(run_id).outputs.model_outputs) == 1
    assert len(client.search_model_versions("name = 'fashion-resnet8'")) == 1


def test_a_model_that_cannot_be_logged_is_a_warning_not_a_failure(mlflow_uri, tmp_path):
    spec = load_spec(DEMO, [])
    run_id = _finished_run(mlflow_uri)
    run_record.finish(spec, mlflow_uri, run_id, "FINISHED", str(tmp_path / "epoch_0000"))  # no such checkpoint
    run = MlflowClient(mlflow_uri).get_run(run_id)
    assert "not a checkpoint directory" in run.data.tags["orch.model_warning"]
    assert run.info.status == "FINISHED" and "#### Result" in run.data.tags[NOTE]
