"""Helpers for the evaluation tests: tiny image-folder datasets, hand-made checkpoints, fake
MLflow runs that point at them, and in-process runs of the real CLI."""

from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from PIL import Image

from orchestrator.errors import OrchError

CLASSES = ("ant", "bee", "cow", "dog")


def make_folder(root: Path, per_class: int, side: int | tuple[int, int], seed: int) -> None:
    """RGB PNGs of a fixed side (int) or random sides in [lo, hi) (tuple), one folder per class."""
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            h, w = (side, side) if isinstance(side, int) else (int(v) for v in rng.integers(*side, size=2))
            # Smooth random blobs: whole-image statistics then differ from image to image.
            coarse = Image.fromarray(rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8))
            coarse.resize((w, h), Image.BILINEAR).save(root / c / f"img{i:03d}.png")


def write_dataset(tmp: Path, side, per_class: int = 20) -> Path:
    """OUT/{train,val}.beton + dataset.json, stored raw (exact pixels) at up to 96 px; returns val.beton."""
    from data_pipeline import WriterOptions, write_imagefolder

    make_folder(tmp / "src" / "train", 4, side, seed=1)
    make_folder(tmp / "src" / "val", per_class, side, seed=2)
    out = tmp / "data"
    write_imagefolder(
        tmp / "src" / "train", tmp / "src" / "val", out, WriterOptions(max_resolution=96, write_mode="raw", workers=1)
    )
    return out / "val.beton"


def make_checkpoint(
    directory: Path,
    *,
    arch: str,
    augment: str,
    size: int,
    val: Path,
    epoch: int = 0,
    top1: float = 50.0,
    seed: int = 0,
    classes=CLASSES,
    mean=(120.0, 125.0, 130.0),
    std=(60.0, 62.0, 64.0),
) -> Path:
    """A checkpoint with random weights, laid out as the training loop writes one."""
    from orchestrator.models import build_model
    from orchestrator.train.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    num_classes = len(classes)
    model = build_model(arch, num_classes)
    with torch.no_grad():  # so that predictions differ between images, not only between classes
        model.fc.bias.zero_()
        model.fc.weight.mul_(30.0)
    meta = {
        "arch": arch,
        "num_classes": num_classes,
        "classes": list(classes),
        "epoch": epoch,
        "metrics": {"val_top1_error": top1, "val_top5_error": 0.0},
        "spec": {"model": {"arch": arch, "options": {}}, "data": {"val": str(val), "augment": augment}},
        "preprocess": {"size": size, "mean": list(mean), "std": list(std), "augment": augment},
    }
    return save_checkpoint(directory, model.state_dict(), {"epoch": epoch}, meta)


def fake_run(uri: str, name: str, checkpoint_dir: Path | str | None, experiment: str = "orch-test") -> str:
    """An MLflow run as `orch submit` leaves one, pointing at checkpoint_dir (a path or a URI;
    None: no checkpoints)."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    tags = {"orch.checkpoint_dir": str(checkpoint_dir)} if checkpoint_dir else {}
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def run_orch(*args) -> tuple[int, str, str]:
    """`orch ARGS` in this process, as orchestrator.cli.main.main runs it: (exit code, stdout, stderr)."""
    from orchestrator.cli.main import _attach_commands, cli

    _attach_commands()
    result = CliRunner().invoke(cli, [str(a) for a in args], standalone_mode=False)
    if result.exception is None or isinstance(result.exception, SystemExit):
        return result.exit_code, result.stdout, result.stderr
    assert isinstance(result.exception, OrchError), f"not a user error: {result.exception!r}"
    return result.exception.exit_code, result.stdout, result.stderr + f"orch: error: {result.exception}\n"


def all_runs(uri: str) -> list:
    client = MlflowClient(uri)
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
