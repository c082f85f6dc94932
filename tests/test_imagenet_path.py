"""The ImageNet path on CPU: an image folder written with `orch data prepare`'s defaults, a
ResNet job with `augment: imagenet` and one with `augment: paper` trained through the whole
loop on the session's Ray, then `orch evaluate RUN --tta 10crop` on the paper run."""

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from eval_fixtures import run_orch

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "jobs" / "resnet18_imagenet.yaml"
CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = ("ant", "bee", "cow"), 16, 5


def _photos(root: Path, per_class: int, seed: int) -> None:
    """JPEG photos of ImageNet-like aspect ratios, a little larger than the test's crops."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = (60, 45) if i % 2 else (45, 60)
            base = rng.integers(0, 256, size=(h, w, 3)) // 2 + 40 * c  # classes differ in brightness
            Image.fromarray(base.astype(np.uint8)).save(root / name / f"{i}.jpg")


@pytest.fixture(scope="module")
def image_data(tmp_path_factory) -> Path:
    from data_pipeline import write_imagefolder

    root = tmp_path_factory.mktemp("imagenet-path")
    _photos(root / "train", TRAIN_PER_CLASS, seed=1)
    _photos(root / "val", VAL_PER_CLASS, seed=2)
    write_imagefolder(root / "train", root / "val", root / "data")  # the writer's defaults
    return root / "data"


def _job(data: Path, tmp: Path, uri: str, augment: str) -> list[str]:
    return [
        f"data.train={data / 'train.beton'}",
        f"data.val={data / 'val.beton'}",
        f"data.augment={augment}",
        "data.num_workers=1",
        "data.resolution.min_res=32",
        "data.resolution.max_res=32",
        "data.resolution.val_res=32",
        "model.num_classes=3",
        "training.epochs=2",
        "training.batch_size=16",
        "training.max_failures=0",
        "scaling.num_workers=1",
        "scaling.use_gpu=false",
        "scaling.cpus_per_worker=2",
        f"checkpoint.storage={tmp / 'ckpt'}",
        "tracking.system_metrics_seconds=1",
        f"tracking.tracking_uri={uri}",
        f"tracking.run_name=resnet18-{augment}",
    ]


@pytest.mark.parametrize("augment", ["imagenet", "paper"])
def test_resnet_job_trains_on_an_image_folder(ray_cluster, image_data, tmp_path, mlflow_uri, augment):
    from orchestrator.spec import load_spec
    from orchestrator.targets.local import run_local

    outcome = run_local(load_spec(JOB, _job(image_data, tmp_path, mlflow_uri, augment)), str(JOB))
    assert outcome.status == "FINISHED"
    client = MlflowClient(mlflow_uri)
    run = client.get_run(outcome.run_id)
    samples = client.get_metric_history(outcome.run_id, "val_samples")
    assert [m.value for m in samples] == [len(CLASSES) * VAL_PER_CLASS] * 2
    waits = client.get_metric_history(outcome.run_id, "data_wait_fraction")
    assert sorted(m.step for m in waits) == [0, 1] and all(0 <= m.value <= 1 for m in waits)
    assert run.data.params["data.augment"] == augment
    # the worker's node logs its system metrics into the run, under its node id
    nodes = {
        k.split("/")[1]
        for k in run.data.metrics
        if k.startswith("system/") and k.endswith("/cpu_utilization_percentage")
    }
    assert len(nodes) == 1, sorted(run.data.metrics)
    if augment == "paper":
        code, stdout, stderr = run_orch("evaluate", outcome.run_id, "--tta", "10crop", "--output", "json")
        assert code == 0, stderr
        evaluated = json.loads(stdout)
        assert (evaluated["views"], evaluated["samples"], evaluated["load_side"]) == (10, 15, 37)
        assert 0 <= evaluated["top1_error"] <= 100
