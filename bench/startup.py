"""Seconds from `orch submit` to the first training step of a 1-worker job, and from starting
the same loop in one plain Python process to its first step (the baseline), both measured in
this run, as a user starts them: a new process each time.

    .venv/bin/python bench/startup.py [--data DIR] [--repeat 2]   # about 3 minutes

orch runs `orch submit jobs/demo_fashion_mnist.yaml` (1 worker, 1 epoch) as `make demo` does,
starting its own embedded Ray; the moment its worker has the first batch in hand is marked by
the loop's test hook ($ORCH_TEST_FAULT, action `mark`), after which the job is stopped with
Ctrl-C. The baseline process imports what the worker needs, builds the same FFCV loader and
model and marks the same moment. FFCV's numba cache is warm after the first repeat; the last
repeat's figures are printed last. The last line is `ratio: X` (orch over baseline).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "jobs" / "demo_fashion_mnist.yaml"
BIN = Path(sys.executable).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "fashion-mnist")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--baseline-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mark", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_child:
        baseline_child(args.data, args.mark)
        return
    data = ensure_data(args.data)
    results = []
    for attempt in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="orch-startup-") as tmp:
            orch = time_orch(data, Path(tmp))
            base = time_baseline(data, Path(tmp))
        results.append((orch, base))
        print(f"repeat {attempt + 1}: orch submit -> first step {orch:.1f} s; baseline {base:.1f} s", flush=True)
    orch, base = results[-1]
    print(f"orch submit to first step: {orch:.1f} s")
    print(f"plain process to first step (baseline): {base:.1f} s")
    print(f"ratio: {orch / base:.2f}")


def ensure_data(data: Path) -> Path:
    if not (data / "train.beton").exists():
        print(f"writing Fashion-MNIST to {data} (as make demo does)", file=sys.stderr)
        subprocess.run([str(BIN / "orch"), "data", "prepare", "fashion-mnist", "--out", str(data)], check=True)
    return data


def time_orch(data: Path, tmp: Path) -> float:
    """`orch submit` of the demo job for 1 epoch, to its worker's first batch."""
    mark = tmp / "mark"
    sets = {
        "data.train": data / "train.beton",
        "data.val": data / "val.beton",
        "training.epochs": 1,
        "checkpoint.storage": tmp / "ckpt",
    }
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    env["ORCH_TEST_FAULT"] = json.dumps({"action": "mark", "epoch": 0, "step": 0, "notify": str(mark)})
    argv = [str(BIN / "orch"), "submit", str(JOB), *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]
    started = time.perf_counter()
    with open(tmp / "orch.log", "w") as log:
        proc = subprocess.Popen(argv, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=log)
    seconds = wait_for(mark, started, proc, log=tmp / "orch.log")
    proc.send_signal(signal.SIGINT)  # as Ctrl-C: the run ends KILLED and the embedded Ray stops
    proc.wait(timeout=120)
    return seconds


def time_baseline(data: Path, tmp: Path) -> float:
    mark = tmp / "mark-baseline"
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--baseline-child", "--data", str(data), "--mark", str(mark)])
    seconds = wait_for(mark, started, proc)
    proc.wait(timeout=60)
    return seconds


def wait_for(mark: Path, started: float, proc, timeout_s: float = 600, log: Path | None = None) -> float:
    while time.perf_counter() - started < timeout_s:
        if mark.exists() and mark.read_text():
            return time.perf_counter() - started
        if proc.poll() is not None:
            said = log.read_text()[-2000:] if log else ""
            raise SystemExit(f"{proc.args[1]} exited {proc.returncode} before its first step\n{said}")
        time.sleep(0.05)
    raise SystemExit(f"no first step within {timeout_s:.0f} s")


def baseline_child(data: Path, mark: Path) -> None:
    """The worker's imports, loader and model, in this process; marks its first batch."""
    sys.path.insert(0, str(ROOT))
    import torch

    from data_pipeline import build_train_loader, read_dataset_info
    from orchestrator.models import build_model
    from orchestrator.spec import load_spec

    spec = load_spec(JOB, [f"data.train={data / 'train.beton'}", f"data.val={data / 'val.beton'}"])
    info = read_dataset_info(spec.data.train)
    workers = int(spec.scaling.cpus_per_worker)
    loader = build_train_loader(
        spec.data.train,
        augment=spec.data.augment,
        batch_size=spec.training.batch_size,
        num_workers=workers,
        seed=0,
        mean=info.mean,
        std=info.std,
    )
    model = build_model(spec.model.arch, info.num_classes, **spec.model.options).to(memory_format=torch.channels_last)
    loader.set_epoch(0)
    images, _ = next(iter(loader))
    mark.write_text("first step\n")
    model(images)


if __name__ == "__main__":
    main()
