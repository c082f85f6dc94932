"""`orch data prepare fashion-mnist` on the real IDX files, and reading it back."""

import json

import numpy as np
import pytest

from data_pipeline import build_val_loader, num_samples, read_dataset_info
from data_pipeline.fashion_mnist import CLASSES, DEFAULT_SOURCE, load_split

from data_fixtures import error_line, leftovers, run_data_cli, stored_raw_image

pytestmark = [
    pytest.mark.skipif(
        not (DEFAULT_SOURCE / "t10k-images-idx3-ubyte.gz").exists(),
        reason="Fashion-MNIST missing: apt-get install dataset-fashion-mnist",
    ),
    # numba's dispatcher finalizer raises a harmless KeyError when an FFCV loader is collected
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("fmnist") / "fashion-mnist"
    code, stdout, stderr = run_data_cli("prepare", "fashion-mnist", "--out", out, "--workers", "2")
    assert code == 0, stderr
    return out, stdout


@pytest.fixture(scope="module")
def idx():
    return {split: load_split(DEFAULT_SOURCE, split) for split in ("train", "val")}


def test_counts_and_files(written):
    out, stdout = written
    assert num_samples(out / "train.beton") == 60_000
    assert num_samples(out / "val.beton") == 10_000
    assert leftovers(out) == ["classes.json", "dataset.json", "train.beton", "val.beton"]
    assert "60,000" in stdout and "10,000" in stdout


def test_dataset_json(written, idx):
    out, _ = written
    assert json.loads((out / "classes.json").read_text()) == CLASSES
    raw = json.loads((out / "dataset.json").read_text())
    assert raw["writer"]["write_mode"] == "raw"
    info = read_dataset_info(out / "train.beton")
    assert info.classes == CLASSES and info.num_classes == 10
    assert (info.num_train, info.num_val, info.image_size) == (60_000, 10_000, 28)
    pixels = idx["train"][0].astype(np.float64)
    assert info.mean == pytest.approx((pixels.mean(),) * 3, abs=1e-3)
    assert info.std == pytest.approx((pixels.std(),) * 3, abs=1e-3)
    assert info.mean[0] == pytest.approx(72.94, abs=0.01)


@pytest.mark.parametrize(
    "split,index", [("train", 0), ("train", 12_345), ("train", 59_999), ("val", 0), ("val", 9_999)]
)
def test_pixels_and_labels_equal_idx(written, idx, split, index):
    from data_pipeline.beton import open_reader
    from data_pipeline.ffcv_compat import field_metadata

    out, _ = written
    beton = out / f"{split}.beton"
    images, labels = idx[split]
    stored = stored_raw_image(beton, index)
    for channel in range(3):
        np.testing.assert_array_equal(stored[:, :, channel], images[index])
    assert field_metadata(open_reader(beton), "label")[index] == labels[index]


def test_val_loader_reads_idx_values(written, idx):
    """Through the FFCV loader (cifar style: no augmentation): normalized IDX pixels, IDX labels."""
    out, _ = written
    info = read_dataset_info(out / "val.beton")
    loader = build_val_loader(
        out / "val.beton",
        augment="cifar",
        batch_size=500,
        num_workers=2,
        mean=info.mean,
        std=info.std,
        rank=3,
        world_size=4,
    )
    assert (loader.start, loader.stop, len(loader)) == (7_500, 10_000, 5)
    images, labels = next(iter(loader))
    expected = (idx["val"][0][7_500:8_000].astype(np.float32) - info.mean[0]) / info.std[0]
    np.testing.assert_allclose(images[:, 1].numpy(), expected, atol=1e-4)
    np.testing.assert_array_equal(labels.numpy(), idx["val"][1][7_500:8_000])


def test_limit_train(tmp_path):
    code, _, stderr = run_data_cli("prepare", "fashion-mnist", "--out", tmp_path / "small", "--limit-train", "1000")
    assert code == 0, stderr
    info = read_dataset_info(tmp_path / "small" / "train.beton")
    assert (info.num_train, num_samples(tmp_path / "small" / "train.beton")) == (1000, 1000)


def test_missing_source_is_one_line(tmp_path):
    code, _, stderr = run_data_cli("prepare", "fashion-mnist", "--out", tmp_path / "o", "--source", tmp_path / "nope")
    assert code == 2
    assert str(tmp_path / "nope") in error_line(stderr)
    assert not (tmp_path / "o").exists()


def test_source_without_idx_files(tmp_path):
    (tmp_path / "src").mkdir()
    code, _, stderr = run_data_cli("prepare", "fashion-mnist", "--out", tmp_path / "o", "--source", tmp_path / "src")
    assert code == 2
    assert "train-images-idx3-ubyte.gz" in error_line(stderr)
    assert not (tmp_path / "o").exists()


def test_prepare_runs_beside_ray_and_mlflow_threads(ray_cluster, mlflow_uri, tmp_path):
    """The writer's processes come from a fork server, never forked from a process whose other
    threads (Ray's, MLflow's asynchronous logging) may hold a lock the child would wait on."""
    import threading

    import mlflow

    from data_pipeline.beton import writer_context

    assert writer_context().get_start_method() == "forkserver"
    mlflow.set_tracking_uri(mlflow_uri)
    with mlflow.start_run():
        mlflow.log_metric("x", 1.0, synchronous=False)  # starts MLflow's logging threads
        assert threading.active_count() > 2
        code, _, stderr = run_data_cli("prepare", "fashion-mnist", "--out", tmp_path / "out", "--workers", "2")
    assert code == 0, stderr
    assert num_samples(tmp_path / "out" / "val.beton") == 10_000
