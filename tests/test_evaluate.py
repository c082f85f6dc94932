"""`orch evaluate`: every protocol against a plain computation from the image files, the same
numbers on 1 and 2 Ray workers, run/checkpoint resolution (local and at URIs), the device
choice, MLflow logging, bad input. One test runs on a GPU where there is one.

Checkpoints are made by hand (random weights, no training): the tests check the protocol
arithmetic, which needs no accuracy.
"""

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from PIL import Image

from orchestrator.errors import OrchError
from orchestrator.evaluation import evaluate
from orchestrator.evaluation.runner import Placement, choose_placement
from orchestrator.evaluation.tta import default_scales, five_crops, make_protocol
from orchestrator.models import build_model
from orchestrator.recovery.checkpoints import CheckpointError, resolve
from orchestrator.train.checkpoint import load_meta, load_model_state

from eval_fixtures import CLASSES, fake_run, make_checkpoint, run_orch, write_dataset


@pytest.fixture(scope="module")
def varied(tmp_path_factory) -> Path:
    """80 validation images of 40-80 px (imagenet style)."""
    return write_dataset(tmp_path_factory.mktemp("varied"), (40, 80))


@pytest.fixture(scope="module")
def square(tmp_path_factory) -> Path:
    """80 validation images of 28 px (cifar style)."""
    return write_dataset(tmp_path_factory.mktemp("square"), 28)


@pytest.fixture(scope="module")
def imagenet_ckpt(varied, tmp_path_factory) -> Path:
    return make_checkpoint(
        tmp_path_factory.mktemp("ck") / "epoch_0000", arch="cifar_resnet8", augment="imagenet", size=32, val=varied
    )


@pytest.fixture(scope="module")
def cifar_ckpt(square, tmp_path_factory) -> Path:
    return make_checkpoint(
        tmp_path_factory.mktemp("ck") / "epoch_0000", arch="cifar_resnet8", augment="cifar", size=28, val=square, seed=1
    )


# --- the protocols, computed independently from the PNG files --------------------------------


def val_images(beton: Path):
    """(uint8 HxWx3 arrays, labels) in the order the writer stored them: sorted classes, sorted files."""
    root = beton.parent.parent / "src" / "val"
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        for path in sorted((root / name).glob("*.png")):
            images.append(np.array(Image.open(path).convert("RGB")))
            labels.append(label)
    return images, torch.tensor(labels)


def square_crop(image: np.ndarray, ratio: float, side: int) -> torch.Tensor:
    """FFCV's center-crop decoder: a square of int(ratio * shorter side), area-resized to side."""
    h, w = image.shape[:2]
    c = int(ratio * min(h, w))
    top, left = (h - c) // 2, (w - c) // 2
    crop = cv2.resize(image[top : top + c, left : left + c], (side, side), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(crop).permute(2, 0, 1).float()


def reference_views(image: np.ndarray, tta: str, style: str, size: int) -> list[torch.Tensor]:
    if style == "cifar":
        x = torch.from_numpy(image).permute(2, 0, 1).float()
        base, crop_from = x, F.pad(x, (4, 4, 4, 4))
    else:
        base = square_crop(image, 0.875, size)
        crop_from = square_crop(image, 1.0, round(size / 0.875))
    if tta == "none":
        return [base]
    if tta == "flip":
        return [base, base.flip(2)]
    if tta == "multiscale":
        start = base if style == "cifar" else crop_from
        return [
            F.interpolate(start[None], size=(s, s), mode="bilinear", antialias=True)[0]
            if s != start.shape[-1]
            else start
            for s in default_scales(size)
        ]
    side = crop_from.shape[-1]
    far, mid = side - size, int(round((side - size) / 2))
    crops = [crop_from[:, y : y + size, x : x + size] for y, x in ((0, 0), (0, far), (far, 0), (far, far), (mid, mid))]
    return [v for c in crops for v in (c, c.flip(2))]


def reference_metrics(checkpoint: Path, beton: Path, tta: str) -> dict:
    meta = load_meta(checkpoint)
    model = build_model(meta["arch"], meta["num_classes"])
    model.load_state_dict(load_model_state(checkpoint))
    model.eval()
    mean = torch.tensor(meta["preprocess"]["mean"]).view(3, 1, 1)
    std = torch.tensor(meta["preprocess"]["std"]).view(3, 1, 1)
    images, labels = val_images(beton)
    probs = []
    with torch.no_grad():
        for image in images:
            views = reference_views(image, tta, meta["preprocess"]["augment"], meta["preprocess"]["size"])
            probs.append(torch.cat([F.softmax(model(((v - mean) / std)[None]), dim=1) for v in views]).mean(dim=0))
    probs = torch.stack(probs)
    top5 = probs.topk(5 if probs.shape[1] >= 5 else probs.shape[1], dim=1).indices
    return {
        "top1_error": 100.0 * (1 - (probs.argmax(1) == labels).float().mean().item()),
        "top5_error": 100.0 * (1 - (top5 == labels[:, None]).any(1).float().mean().item()),
        "loss": F.nll_loss(probs.log(), labels).item(),
    }


PROTOCOLS = [
    ("imagenet", "none"),
    ("imagenet", "flip"),
    ("imagenet", "10crop"),
    ("imagenet", "multiscale"),
    ("cifar", "10crop"),
    ("cifar", "multiscale"),
]  # cifar none and flip: test_ensemble's Fashion-MNIST


@pytest.mark.parametrize("style, tta", PROTOCOLS)
def test_protocol_matches_a_plain_computation(ray_cluster, mlflow_uri, style, tta, request):
    checkpoint = request.getfixturevalue(f"{style}_ckpt")
    data = request.getfixturevalue("varied" if style == "imagenet" else "square")
    got = evaluate(str(checkpoint), tta=tta, workers=1)
    want = reference_metrics(checkpoint, data, tta)
    assert got["samples"] == 80 and got["views"] == {"none": 1, "flip": 2, "10crop": 10, "multiscale": 5}[tta]
    one_image = 100 / 80 + 1e-9
    assert abs(got["top1_error"] - want["top1_error"]) <= one_image, (got, want)
    assert abs(got["top5_error"] - want["top5_error"]) <= one_image, (got, want)
    # OpenCV's area resize here and in FFCV's C++ may round a pixel differently: a looser loss tolerance.
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-3 if style == "imagenet" else 1e-5)
    assert got["images_per_second"] > 0 and got["logged_as"] == []  # no run names this checkpoint
    if style == "imagenet" and tta in ("flip", "10crop"):
        two = evaluate(str(checkpoint), tta=tta, workers=2, batch_size=16)
        assert two["samples"] == 80 and two["threads_per_worker"] == 1
        assert (two["top1_error"], two["top5_error"]) == (got["top1_error"], got["top5_error"])
        assert two["loss"] == pytest.approx(got["loss"], rel=1e-5)


# --- runs, checkpoints and MLflow ------------------------------------------------------------


@pytest.fixture
def run_with_epochs(tmp_path, varied, mlflow_uri):
    """A run whose checkpoint dir holds epochs 0-2; epoch 1 has the lowest val_top1_error."""
    root = tmp_path / "ckpt" / "job-1234"
    for epoch, top1 in enumerate((60.0, 40.0, 55.0)):
        make_checkpoint(
            root / f"epoch_{epoch:04d}",
            arch="cifar_resnet8",
            augment="imagenet",
            size=32,
            val=varied,
            epoch=epoch,
            top1=top1,
            seed=epoch,
        )
    return fake_run(mlflow_uri, "trained-run", root), root


def test_run_by_id_and_name_best_and_latest_logged_by_protocol(ray_cluster, run_with_epochs, mlflow_uri):
    run_id, root = run_with_epochs
    code, out, err = run_orch("evaluate", run_id, "--tta", "flip", "--workers", "2", "-o", "json")
    assert code == 0, err
    best = json.loads(out)
    assert best["checkpoint"] == str(root / "epoch_0001") and best["run_id"] == run_id
    assert best["sha256"] == hashlib.sha256((root / "epoch_0001" / "model.pt").read_bytes()).hexdigest()
    assert best["checksums"] == "verified" and best["images_per_second"] > 0

    code, out, err = run_orch("evaluate", "trained-run", "--checkpoint", "latest", "--tta", "10crop")
    assert code == 0, err
    assert "epoch_0002" in out and "top-1 error" in out and "images/s" in out

    client = MlflowClient(mlflow_uri)
    flip = client.get_metric_history(run_id, "eval_flip_top1_error")
    assert [(m.step, m.value) for m in flip] == [(1, best["top1_error"])]
    assert [m.step for m in client.get_metric_history(run_id, "eval_10crop_top5_error")] == [2]
    for key in ("eval_flip_top5_error", "eval_flip_loss", "eval_flip_images_per_second", "eval_10crop_loss"):
        assert key in client.get_run(run_id).data.metrics
    assert json.loads(client.get_run(run_id).data.tags["orch.eval.flip"])["samples"] == 80


def test_a_checkpoint_path_logs_to_the_run_that_wrote_it(ray_cluster, run_with_epochs, mlflow_uri):
    run_id, root = run_with_epochs
    outcome = evaluate(str(root / "epoch_0000"), tta="none")  # on the cluster's GPUs if any, else 1 CPU task
    assert outcome["run_id"] == run_id and outcome["epoch"] == 0
    gpus = int(ray_cluster.cluster_resources().get("GPU", 0))
    assert outcome["device"] == ("cuda" if gpus else "cpu") and outcome["gpus"] == gpus
    assert outcome["precision"] == ("bf16" if gpus else "fp32") and outcome["workers"] == max(gpus, 1)
    assert outcome["logged_as"] == [
        "eval_none_images_per_second",
        "eval_none_loss",
        "eval_none_top1_error",
        "eval_none_top5_error",
    ]
    assert "eval_none_top1_error" in MlflowClient(mlflow_uri).get_run(run_id).data.metrics


def test_checksums_are_verified_when_present(imagenet_ckpt, tmp_path, mlflow_uri):
    checkpoint = shutil.copytree(imagenet_ckpt, tmp_path / "epoch_0000")
    model_hash = hashlib.sha256((checkpoint / "model.pt").read_bytes()).hexdigest()
    assert (checkpoint / "checksums.json").exists()  # save_checkpoint writes one
    member = resolve(str(checkpoint), "best", mlflow_uri)
    assert (member.sha256, member.checksums) == (model_hash, "verified")
    meta = (checkpoint / "meta.json").read_text()
    (checkpoint / "meta.json").write_text(meta + " ")
    with pytest.raises(CheckpointError, match="meta.json: sha256 .* does not match checksums.json"):
        resolve(str(checkpoint), "best", mlflow_uri)
    (checkpoint / "checksums.json").unlink()  # as checkpoints written before checksums existed
    member = resolve(str(checkpoint), "best", mlflow_uri)
    assert (member.sha256, member.checksums) == (model_hash, "computed")


def test_checkpoints_at_a_uri_are_chosen_there_downloaded_and_verified(
    ray_cluster, run_with_epochs, mlflow_uri, tmp_path, monkeypatch
):
    """A run whose orch.checkpoint_dir is a URI, as Ray Train writes to s3:// or gs://. file://
    goes through pyarrow.fs.FileSystem.from_uri, the code path that serves s3:// (there is no S3
    here): listing, choosing the best, downloading and verifying all read through pyarrow."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _, root = run_with_epochs
    bucket = shutil.copytree(root, tmp_path / "bucket" / "job-1234")
    remote = f"file://{bucket}"
    run_id = fake_run(mlflow_uri, "remote-run", remote)
    local = evaluate(str(root / "epoch_0001"), tta="flip", workers=1, log=False)

    code, out, err = run_orch("evaluate", "remote-run", "--tta", "flip", "--workers", "1", "-o", "json")
    assert code == 0, err
    got = json.loads(out)
    assert got["checkpoint"] == f"{remote}/epoch_0001" and got["run_id"] == run_id  # the best, as locally
    assert (got["checksums"], got["sha256"]) == ("verified", local["sha256"])
    copy = Path(got["local_copy"])
    assert copy.name == "epoch_0001" and copy.parent.parent == tmp_path / "cache" / "orch" / "checkpoints"
    assert [got[k] for k in ("top1_error", "top5_error", "samples")] == [
        local[k] for k in ("top1_error", "top5_error", "samples")
    ]
    assert got["loss"] == pytest.approx(local["loss"], rel=1e-9)
    assert "eval_flip_top1_error" in MlflowClient(mlflow_uri).get_run(run_id).data.metrics

    # The cached copy is reused; a checkpoint URI names its run by its parent; latest as locally.
    written = (copy / "model.pt").stat().st_mtime_ns
    assert resolve(remote, "best", mlflow_uri).checkpoint == copy
    assert (copy / "model.pt").stat().st_mtime_ns == written
    latest = resolve(f"{remote}/epoch_0002/", "best", mlflow_uri)
    assert (latest.run_id, latest.meta["epoch"], latest.source) == (run_id, 2, f"{remote}/epoch_0002")
    assert resolve(remote, "latest", mlflow_uri).source == f"{remote}/epoch_0002"

    # Damaged at the source: refused, naming the URI, and no copy is kept.
    (bucket / "epoch_0000" / "meta.json").write_text((bucket / "epoch_0000" / "meta.json").read_text() + " ")
    code, out, err = run_orch("evaluate", f"{remote}/epoch_0000")
    assert code == 2 and out == "" and err.count("orch: error:") == 1, err
    assert f"orch: error: {remote}/epoch_0000/meta.json: sha256" in err and "the checkpoint is damaged" in err
    assert not (copy.parent / "epoch_0000").exists()


# --- the device ------------------------------------------------------------------------------


def test_the_device_follows_the_flags_and_the_cluster():
    cpu_only = [{"CPU": 2.0}]
    gpu_node = [{"CPU": 16.0, "GPU": 2.0}, {"CPU": 8.0}]
    assert choose_placement(None, None, cpu_only) == Placement("cpu", 1, 2)  # today's default
    assert choose_placement(None, 2, cpu_only) == Placement("cpu", 2, 1)
    assert choose_placement(None, None, gpu_node) == Placement("cuda", 2, 8)  # every GPU; CPUs of GPU nodes
    assert choose_placement(1, None, gpu_node).describe() == {
        "device": "cuda",
        "gpus": 1,
        "workers": 1,
        "threads_per_worker": 16,
        "precision": "bf16",
    }
    assert choose_placement(0, None, gpu_node) == Placement("cpu", 1, 16)  # at most one node's CPUs
    assert choose_placement(0, 3, gpu_node) == choose_placement(None, 3, gpu_node) == Placement("cpu", 3, 8)
    assert choose_placement(0, None, gpu_node).describe()["precision"] == "fp32"
    refused = [
        ((4, None, gpu_node), "--gpus 4: the Ray cluster has 2 GPUs; pass --gpus 2 or fewer (0 for CPUs)"),
        ((1, None, cpu_only), "--gpus 1: the Ray cluster has 0 GPUs; pass --gpus 0 to evaluate on CPUs"),
        ((2, 2, gpu_node), "--gpus 2 and --workers 2: --gpus runs one task per GPU"),
    ]
    for args, message in refused:
        with pytest.raises(OrchError, match=re.escape(message)):
            choose_placement(*args)


def test_more_gpus_than_the_cluster_has_is_refused_before_any_task(ray_cluster, run_with_epochs, mlflow_uri):
    run_id, _ = run_with_epochs
    have = int(ray_cluster.cluster_resources().get("GPU", 0))
    code, out, err = run_orch("evaluate", run_id, "--gpus", have + 1)
    lines = [line for line in err.splitlines() if line.startswith("orch: error:")]
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith(f"orch: error: --gpus {have + 1}: the Ray cluster has {have} GPU")
    run = MlflowClient(mlflow_uri).get_run(run_id)
    assert run.info.status == "FINISHED" and not run.data.metrics  # nothing logged


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("tta", ["flip", "10crop"])  # build_val_loader's GPU path: 0.875 center, whole side
def test_on_a_gpu_in_bf16_the_numbers_are_the_cpu_ones(ray_cluster, imagenet_ckpt, tta):
    cpu = evaluate(str(imagenet_ckpt), tta=tta, gpus=0, workers=1)
    gpu = evaluate(str(imagenet_ckpt), tta=tta, gpus=1)
    assert (gpu["device"], gpu["gpus"], gpu["precision"], gpu["samples"]) == ("cuda", 1, "bf16", 80)
    three_images = 3 * 100 / 80 + 1e-9  # bf16 may flip a close call
    assert abs(gpu["top1_error"] - cpu["top1_error"]) <= three_images
    assert abs(gpu["top5_error"] - cpu["top5_error"]) <= three_images
    assert gpu["loss"] == pytest.approx(cpu["loss"], rel=5e-2)


# --- bad input -------------------------------------------------------------------------------


def test_bad_input_is_one_line_exit_2(tmp_path, mlflow_uri, varied, square, imagenet_ckpt, cifar_ckpt):
    fake_run(mlflow_uri, "never-checkpointed", None)
    fake_run(mlflow_uri, "twin", tmp_path)
    fake_run(mlflow_uri, "twin", tmp_path)
    (tmp_path / "empty").mkdir()
    cases = [
        (["0123456789abcdef0123456789abcdef"], "unknown run '0123456789abcdef0123456789abcdef'"),
        (["no-such-run"], "unknown run 'no-such-run'"),
        (["twin"], "run name 'twin' is ambiguous (2 runs"),
        (["never-checkpointed"], "has no checkpoint (it has no orch.checkpoint_dir tag)"),
        ([str(tmp_path / "empty")], "not a checkpoint directory (no meta.json)"),
        ([str(tmp_path / "missing" / "epoch_0000")], "no such checkpoint directory"),
        ([str(imagenet_ckpt), "--scales", "32,64"], "--scales applies to --tta multiscale only"),
        ([str(imagenet_ckpt), "--tta", "multiscale", "--scales", "32,x"], "--scales 32,x: expected"),
        ([str(cifar_ckpt), "--data", str(varied)], "trained cifar-style at 28x28"),
        ([str(imagenet_ckpt), "--data", str(tmp_path / "nope.beton")], "nope.beton: no such file"),
        ([str(imagenet_ckpt), "--gpus", "2", "--workers", "2"], "--gpus 2 and --workers 2: --gpus runs one task"),
        ([f"file://{tmp_path}/nowhere"], f"file://{tmp_path}/nowhere: nothing there"),
        ([f"file://{tmp_path}/empty"], "empty: not a checkpoint (no meta.json) and holds no epoch_NNNN"),
        (["nosuch://bucket/run"], "nosuch://bucket/run: cannot open (Unrecognized filesystem type"),
    ]
    for args, fragment in cases:
        code, out, err = run_orch("evaluate", *args)
        lines = [line for line in err.splitlines() if line.startswith("orch: error:")]
        assert code == 2 and len(lines) == 1 and fragment in lines[0], (args, err)
        assert out == ""


def test_shell_command_reports_a_missing_meta_json_without_traceback(tmp_path):
    (tmp_path / "epoch_0000").mkdir()
    (tmp_path / "epoch_0000" / "model.pt").write_bytes(b"")
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", "evaluate", str(tmp_path / "epoch_0000")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(Path.home()),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}",
        },
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"orch: error: {tmp_path / 'epoch_0000'}: not a checkpoint directory (no meta.json)"
    assert not (tmp_path / "m.db").exists()  # nothing looked up in a store that does not exist


# --- the views themselves --------------------------------------------------------------------


def test_five_crops_are_the_corners_and_the_center():
    image = torch.arange(36.0).view(1, 1, 6, 6)
    crops = five_crops(image, 4)
    assert [c[0, 0, 0, 0].item() for c in crops] == [0, 2, 12, 14, 7]
    padded = five_crops(torch.ones(1, 1, 4, 4), 4, pad=4)
    assert padded[0].sum() == 0 and torch.equal(padded[4], torch.ones(1, 1, 4, 4))  # black corner, image center


def test_default_scales_follow_the_paper_relative_to_224():
    assert default_scales(224) == (224, 256, 384, 480, 640)
    assert make_protocol("multiscale", {"size": 28, "augment": "cifar"}).scales == (28, 32, 48, 60, 80)
    assert make_protocol("10crop", {"size": 224, "augment": "imagenet"}).load_geometry() == (256, 1.0)
    assert make_protocol("flip", {"size": 224, "augment": "imagenet"}).load_geometry() == (224, 0.875)
