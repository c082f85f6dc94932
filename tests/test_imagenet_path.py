"""The ImageNet path on CPU: an image folder written with `orch data prepare`'s defaults, a
ResNet job with `augment: paper` trained through the whole loop by `orch submit` as a user
runs it (on the session's Ray), then `orch evaluate RUN --tta 10crop` on that run."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from job_fixtures import TimedLines, as_set_args, communicate_timed, orch_process

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


def _job(data: Path, tmp: Path, augment: str) -> list[str]:
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
        f"tracking.run_name=resnet18-{augment}",
        "tracking.log_model=false",  # seconds per run; tests/test_dashboard.py checks the logged model
    ]


def _check_run(uri: str, run_id: str) -> None:
    """FINISHED, every validation image counted once per epoch, the data wait logged per epoch."""
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    samples = client.get_metric_history(run_id, "val_samples")
    assert [m.value for m in samples] == [len(CLASSES) * VAL_PER_CLASS] * 2
    waits = client.get_metric_history(run_id, "data_wait_fraction")
    assert sorted(m.step for m in waits) == [0, 1] and all(0 <= m.value <= 1 for m in waits)


def _check_stages(err: TimedLines, started: float) -> None:
    """The terminal speaks from the first second: the first line within 2 s of the start, before
    torch, Ray and MLflow load, then each stage before the first epoch line."""
    (first_at, first), *_ = err.lines
    assert first_at - started < 2 and first.startswith("orch: checking job resnet18"), (first_at - started, first)
    lines = [line for _, line in err.lines]
    epoch_line = next(i for i, line in enumerate(lines) if line.startswith("epoch   1/2"))
    for stage in ("orch: joining the Ray at ", "orch: starting 1 worker (2 CPU each)"):
        assert any(line.startswith(stage) for line in lines[:epoch_line]), (stage, lines)


def test_orch_submit_trains_a_paper_job_and_orch_evaluate_takes_tencrop_from_the_shell(
    ray_address, image_data, mlflow_uri, tmp_path
):
    """`augment: paper` through the real `orch submit` in its own process (joining the session's
    Ray): one JSON object on stdout; on stderr a first line within 2 s, the stages, the epoch
    lines; the worker node's system metrics in the run under its node id. Then the real `orch
    evaluate RUN --tta 10crop --workers 2` in its own process: every image counted once over two
    shards, the result logged to the run. (`augment: imagenet`'s crops are tests/test_geometry.py's.)"""
    sets = as_set_args(_job(image_data, tmp_path, "paper") + ["tracking.system_metrics_seconds=1"])
    started = time.monotonic()
    proc = orch_process("submit", JOB, *sets, "--output", "json", cwd=tmp_path, uri=mlflow_uri, ray_address=ray_address)
    out, err_lines = communicate_timed(proc, timeout_s=600)
    err = err_lines.text()
    assert proc.returncode == 0, err[-3000:]
    _check_stages(err_lines, started)
    assert out.count("\n") == 1 and out.endswith("}\n"), out  # stdout: exactly one JSON object
    outcome = json.loads(out)
    assert set(outcome) == {"run_id", "status", "metrics", "best_checkpoint"}
    assert outcome["status"] == "FINISHED" and outcome["metrics"]["epoch"] == 1
    assert "best_val_top1_error" in outcome["metrics"]
    assert "epoch   2/2" in err and "data wait" in err and "Traceback" not in err
    _check_run(mlflow_uri, outcome["run_id"])
    run = MlflowClient(mlflow_uri).get_run(outcome["run_id"])
    assert run.data.params["data.augment"] == "paper" and int(run.data.tags["orch.driver_pid"]) == proc.pid
    node_cpu = [k for k in run.data.metrics if k.startswith("system/") and k.endswith("/cpu_utilization_percentage")]
    assert len(node_cpu) == 1 and node_cpu[0].count("/") == 2, sorted(run.data.metrics)

    proc = orch_process(
        "evaluate", outcome["run_id"], "--tta", "10crop", "--workers", "2", "--output", "json",
        cwd=tmp_path, uri=mlflow_uri, ray_address=ray_address,
    )  # fmt: skip
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    evaluated = json.loads(out)
    assert evaluated["run_id"] == outcome["run_id"] and evaluated["workers"] == 2
    assert (evaluated["views"], evaluated["samples"], evaluated["load_side"]) == (10, 15, 37)
    assert evaluated["images_per_second"] > 0
    logged = MlflowClient(mlflow_uri).get_run(outcome["run_id"]).data.metrics
    assert logged["eval_10crop_top1_error"] == pytest.approx(evaluated["top1_error"])
