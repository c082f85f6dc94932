"""`orch data prepare imagefolder` and `orch data inspect`: mixed files, corrupt files, bad input."""

import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_pipeline import num_samples, read_dataset_info

from data_fixtures import error_line, leftovers, make_image_folder, run_data_cli, stored_raw_image


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    make_image_folder(root / "train", seed=1)
    make_image_folder(root / "val", seed=2, per_class=4)
    (root / "train" / "bee" / "notes.txt").write_text("not an image, ignored")
    corrupt = root / "train" / "bee" / "broken.jpg"
    good = (root / "train" / "bee" / "img3.png").read_bytes()
    corrupt.write_bytes(good[: len(good) // 2])  # a truncated file
    return root, corrupt


@pytest.fixture(scope="module")
def prepared(folders):
    root, _ = folders
    out = root / "out"
    result = run_data_cli(
        "prepare",
        "imagefolder",
        "--train",
        root / "train",
        "--val",
        root / "val",
        "--out",
        out,
        "--workers",
        "2",
        "--max-resolution",
        "64",
        "--write-mode",
        "proportion",
    )
    return out, result


def test_writes_without_traceback_and_names_the_corrupt_file(folders, prepared):
    _, corrupt = folders
    out, (code, stdout, stderr) = prepared
    assert code == 0, stderr
    assert "Traceback" not in stderr
    warnings = [line for line in stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and str(corrupt) in warnings[0]
    assert "skipped unreadable images: 1 train, 0 val" in stdout
    assert leftovers(out) == ["classes.json", "dataset.json", "train.beton", "val.beton"]


def test_counts_classes_and_info(prepared):
    out, _ = prepared
    assert num_samples(out / "train.beton") == 30
    assert num_samples(out / "val.beton") == 12
    assert json.loads((out / "classes.json").read_text()) == ["ant", "bee", "cow"]
    info = read_dataset_info(out / "val.beton")
    assert (info.num_classes, info.num_train, info.num_val, info.image_size) == (3, 30, 12, None)
    # uniform noise: mean ~127.5; JPEG and shrinking smooth it, so std is below noise's 73.9
    assert all(120 < m < 136 for m in info.mean) and all(30 < s < 75 for s in info.std)
    writer = json.loads((out / "dataset.json").read_text())["writer"]
    assert writer["skipped"] == {"train": 1, "val": 0}
    assert (writer["write_mode"], writer["max_resolution"], writer["jpeg_quality"]) == ("proportion", 64, 90)


def test_inspect_json(prepared):
    out, _ = prepared
    code, stdout, stderr = run_data_cli("inspect", out / "train.beton", "--output", "json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert (report["num_samples"], report["num_classes"]) == (30, 3)
    assert report["fields"] == {"image": "RGBImageField", "label": "IntField"}
    assert 8 <= report["height"]["min"] <= report["height"]["median"] <= report["height"]["max"] <= 64
    assert report["size_bytes"] == (out / "train.beton").stat().st_size
    code, text, _ = run_data_cli("inspect", out / "train.beton")
    assert code == 0 and "samples:     30" in text


def test_strict_fails_naming_the_file(folders, tmp_path):
    root, corrupt = folders
    code, _, stderr = run_data_cli(
        "prepare",
        "imagefolder",
        "--train",
        root / "train",
        "--val",
        root / "val",
        "--out",
        tmp_path / "out",
        "--strict",
        "--workers",
        "2",
    )
    assert code == 2
    assert str(corrupt) in error_line(stderr)
    assert not (tmp_path / "out").exists()


def test_raw_mode_stores_rgb_pixels_exactly(tmp_path):
    """Gray, RGBA and palette PNGs are stored as their RGB conversion, at one size: image_size set."""
    rng = np.random.default_rng(3)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            rgb = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
            Image.fromarray(rgb).convert("L").save(tmp_path / split / c / "gray.png")
            Image.fromarray(rgb).convert("RGBA").save(tmp_path / split / c / "rgba.png")
    out = tmp_path / "out"
    code, stdout, stderr = run_data_cli(
        "prepare",
        "imagefolder",
        "--train",
        tmp_path / "train",
        "--val",
        tmp_path / "val",
        "--out",
        out,
        "--write-mode",
        "raw",
        "--max-resolution",
        "32",
        "--workers",
        "1",
        "--output",
        "json",
    )
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert (summary["num_train"], summary["image_size"], summary["skipped"]) == (4, 32, {"train": [], "val": []})
    assert read_dataset_info(out / "train.beton").image_size == 32
    gray = np.asarray(Image.open(tmp_path / "train" / "a" / "gray.png"))
    stored = stored_raw_image(out / "train.beton", 0, (32, 32, 3))  # a/gray.png sorts first
    for channel in range(3):
        np.testing.assert_array_equal(stored[:, :, channel], gray)
    rgba = np.asarray(Image.open(tmp_path / "train" / "a" / "rgba.png"))
    np.testing.assert_array_equal(stored_raw_image(out / "train.beton", 1, (32, 32, 3)), rgba[:, :, :3])


def _prepare(train, val, out):
    return run_data_cli("prepare", "imagefolder", "--train", train, "--val", val, "--out", out, "--workers", "1")


def test_missing_folder(tmp_path, folders):
    root, _ = folders
    code, _, stderr = _prepare(tmp_path / "missing", root / "val", tmp_path / "out")
    assert code == 2
    line = error_line(stderr)
    assert str(tmp_path / "missing") in line and "no such folder" in line
    assert not (tmp_path / "out").exists()


def test_empty_class_folder_is_named(tmp_path, folders):
    root, _ = folders
    make_image_folder(tmp_path / "train", classes=("a", "b"), per_class=2)
    (tmp_path / "train" / "empty_class").mkdir()
    code, _, stderr = _prepare(tmp_path / "train", root / "val", tmp_path / "out")
    assert code == 2
    assert str(tmp_path / "train" / "empty_class") in error_line(stderr)
    assert not (tmp_path / "out").exists()


def test_folder_without_class_subfolders(tmp_path, folders):
    root, _ = folders
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "x.jpg")
    code, _, stderr = _prepare(tmp_path / "flat", root / "val", tmp_path / "out")
    assert code == 2
    assert str(tmp_path / "flat") in error_line(stderr) and "class subfolders" in stderr


def test_val_class_not_in_train(tmp_path, folders):
    root, _ = folders
    make_image_folder(tmp_path / "val", classes=("ant", "zebra"), per_class=1)
    code, _, stderr = _prepare(root / "train", tmp_path / "val", tmp_path / "out")
    assert code == 2
    assert "zebra" in error_line(stderr)


def test_out_is_a_file(tmp_path, folders):
    root, _ = folders
    (tmp_path / "out").write_text("x")
    code, _, stderr = _prepare(root / "train", root / "val", tmp_path / "out")
    assert code == 2
    assert str(tmp_path / "out") in error_line(stderr)


def test_existing_out_keeps_no_partial_files(tmp_path, folders):
    root, _ = folders
    out = tmp_path / "out"
    out.mkdir()
    (out / "README").write_text("mine")
    code, _, _ = _prepare(root / "train", tmp_path / "missing-val", out)
    assert code == 2
    assert leftovers(out) == ["README"]


@pytest.mark.parametrize("content", [b"", b"hello, not a beton" * 10, b"\x02\x00" + b"\x00" * 100])
def test_inspect_not_a_beton(tmp_path, content):
    bad = tmp_path / "bad.beton"
    bad.write_bytes(content)
    code, _, stderr = run_data_cli("inspect", bad)
    assert code == 2
    line = error_line(stderr)
    assert str(bad) in line and "orch data prepare" in line


def test_inspect_missing_file(tmp_path):
    code, _, stderr = run_data_cli("inspect", tmp_path / "nope.beton", "--output", "json")
    assert code == 2
    assert str(tmp_path / "nope.beton") in error_line(stderr)


@pytest.mark.skipif(
    find_spec("orchestrator.cli.models") is None or find_spec("orchestrator.cli.submit") is None,
    reason="the orch CLI root needs orchestrator.cli.models and .submit",
)
def test_real_orch_binary_prints_one_line(tmp_path):
    orch = Path(sys.executable).with_name("orch")
    bad = tmp_path / "bad.beton"
    bad.write_bytes(b"nope")
    proc = subprocess.run(
        [str(orch), "data", "inspect", str(bad)],
        capture_output=True,
        text=True,
        env=dict(os.environ, COLUMNS="200"),
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and str(bad) in proc.stderr, proc.stderr


def test_defaults_keep_a_short_side_of_256_for_the_papers_protocols(tmp_path):
    """640x480 photos written with the defaults keep their shorter side above 256 (validation
    resizes to 256, 10-crop too, the paper's augmentation to 256-480); inspect says so."""
    rng = np.random.default_rng(5)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i, (w, h) in enumerate([(640, 480), (480, 640)]):
                Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(
                    tmp_path / split / c / f"{i}.jpg"
                )
    out = tmp_path / "out"
    code, _, stderr = run_data_cli(
        "prepare", "imagefolder", "--train", tmp_path / "train", "--val", tmp_path / "val", "--out", out
    )
    assert code == 0, stderr
    code, stdout, stderr = run_data_cli("inspect", out / "train.beton", "--output", "json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["short_side"] == {"min": 375, "median": 375.0, "max": 375}
    assert report["long_side"] == {"min": 500, "median": 500.0, "max": 500}
    code, text, _ = run_data_cli("inspect", out / "train.beton")
    assert "short side:  min 375, median 375, max 375" in text
    stored = read_dataset_info(out / "val.beton").short_side
    assert stored == {split: {"min": 375, "median": 375.0, "max": 375} for split in ("train", "val")}


def test_a_job_is_warned_when_its_resize_would_upsample_the_stored_images(prepared):
    """Images stored at 64 pixels, a job that validates at 224 (resize to 256) and trains with
    the paper's augmentation (256 to 480): both splits are named, before anything starts."""
    from orchestrator.spec import load_spec
    from orchestrator.spec.preflight import resolution_warnings

    out, _ = prepared
    job = Path(__file__).resolve().parent.parent / "jobs" / "resnet18_imagenet.yaml"
    sets = [f"data.train={out / 'train.beton'}", f"data.val={out / 'val.beton'}", "model.num_classes=3"]
    info = read_dataset_info(out / "train.beton")
    warnings = resolution_warnings(load_spec(job, sets), info)
    assert [w.split(":")[0] for w in warnings] == ["data.val", "data.train"]
    assert "validation resizes to 256" in warnings[0] and "at least 256" in warnings[1]
    small = sets + ["data.resolution.val_res=16", "data.resolution.max_res=16", "data.resolution.min_res=16"]
    assert resolution_warnings(load_spec(job, small + ["data.augment=imagenet"]), info) == []
