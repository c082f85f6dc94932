"""Seconds from `orch submit` to the first training step of a 1-worker job, stage by stage, and
from starting the same loop in one plain Python process to its first step (the baseline), both
measured in this run, as a user starts them: a new process each time.

    .venv/bin/python bench/startup.py [--data DIR] [--repeat 2] [--ray embedded|running]   # about 3 minutes
    .venv/bin/python bench/startup.py --restart        # a worker killed mid-epoch: seconds to the next step

orch runs `orch submit jobs/demo_fashion_mnist.yaml` (1 worker, 1 epoch) as `make demo` does:
with --ray embedded (the default) it starts its own Ray, as a first command does; with --ray
running it joins a Ray this bench started beforehand with `ray start --head`, as every command
after the first does when a user keeps one running (README: "The Ray orch starts"). Each
process marks its stages ($ORCH_STARTUP_TRACE: the driver, Ray Train's controller, the worker;
orchestrator/startup_trace.py) up to the worker's first batch in hand, after which the job is
stopped with Ctrl-C. The baseline process imports what the worker needs, builds the same FFCV
loader, model and optimizer and marks the same stages. FFCV's numba cache is warm after the first repeat;
the last repeat's stages are printed, each with the seconds it took since the mark before it.
The last line is `ratio: X` (orch's first step over the baseline's).

With --restart, the job (training.max_failures=1) has its worker SIGKILLed by the test hook
before step 3 of epoch 0; Ray Train restarts the worker group from the start, and the bench
prints the seconds from the kill to the new worker's first batch, stage by stage.
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
sys.path.insert(0, str(ROOT))
JOB = ROOT / "jobs" / "demo_fashion_mnist.yaml"
BIN = Path(sys.executable).parent
FIRST_BATCH = "worker: first batch"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "fashion-mnist")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--ray", choices=("embedded", "running"), default="embedded")
    parser.add_argument("--restart", action="store_true", help="time a restart after a killed worker instead")
    parser.add_argument("--baseline-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trace", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_child:
        baseline_child(args.data, args.trace)
        return
    data = ensure_data(args.data)
    if args.restart:
        with tempfile.TemporaryDirectory(prefix="orch-restart-") as tmp:
            stages = time_restart(data, Path(tmp))
        print("restart after a killed worker:")
        print_stages(stages)
        print(f"killed worker to the next first step: {stages[-1][0]:.1f} s")
        return
    with running_ray(args.ray == "running") as address:
        results = []
        for attempt in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="orch-startup-") as tmp:
                orch = time_orch(data, Path(tmp), address)
                base = time_baseline(data, Path(tmp))
            results.append((orch, base))
            print(
                f"repeat {attempt + 1}: orch submit -> first step {orch[-1][0]:.1f} s; baseline {base[-1][0]:.1f} s",
                flush=True,
            )
    orch, base = results[-1]
    for name, stages in (("orch submit" + (" (a running Ray)" if address else ""), orch), ("baseline", base)):
        print(f"{name}:")
        print_stages(stages)
    print(f"orch submit to first step: {orch[-1][0]:.1f} s")
    print(f"plain process to first step (baseline): {base[-1][0]:.1f} s")
    print(f"ratio: {orch[-1][0] / base[-1][0]:.2f}")


def print_stages(stages: list[tuple[float, str]]) -> None:
    previous = 0.0
    for seconds, stage in stages:
        print(f"  {seconds - previous:6.1f} s  {stage}  (at {seconds:.1f} s)")
        previous = seconds


def ensure_data(data: Path) -> Path:
    if not (data / "train.beton").exists():
        print(f"writing Fashion-MNIST to {data} (as make demo does)", file=sys.stderr)
        subprocess.run([str(BIN / "orch"), "data", "prepare", "fashion-mnist", "--out", str(data)], check=True)
    return data


class running_ray:
    """With `start`, a Ray of this bench's own (`ray start --head` in a temp dir), its GCS address
    yielded; else nothing (None)."""

    def __init__(self, start: bool):
        self.start = start
        self.root = Path(tempfile.mkdtemp(prefix="orch-bench-ray-", dir="/tmp")) if start else None
        self.proc = None

    def __enter__(self):
        if not self.start:
            return None
        port = 6000 + os.getpid() % 1000
        self.proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--include-dashboard=false"]
            + [f"--temp-dir={self.root}", "--disable-usage-stats", "--num-cpus=2"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        )
        time.sleep(15)  # ray start's own start-up, paid once, before the timed commands
        return f"127.0.0.1:{port}"

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)


def time_orch(data: Path, tmp: Path, address: str | None) -> list[tuple[float, str]]:
    """`orch submit` of the demo job for 1 epoch, to its worker's first batch: [(seconds, stage)]."""
    from orchestrator import startup_trace

    trace = tmp / "trace"
    sets = {
        "data.train": data / "train.beton",
        "data.val": data / "val.beton",
        "training.epochs": 1,
        "checkpoint.storage": tmp / "ckpt",
    }
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}", **{startup_trace.VARIABLE: str(trace)})
    if address:
        env["RAY_ADDRESS"] = address
    argv = [str(BIN / "orch"), "submit", str(JOB), *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]
    started = time.time()
    with open(tmp / "orch.log", "w") as log:
        proc = subprocess.Popen(argv, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=log)
    stages = wait_for(trace, started, proc, log=tmp / "orch.log")
    proc.send_signal(signal.SIGINT)  # as Ctrl-C: the run ends KILLED and the embedded Ray stops
    proc.wait(timeout=120)
    return stages


def time_restart(data: Path, tmp: Path) -> list[tuple[float, str]]:
    """The demo job with its worker killed before step 3 of epoch 0: [(seconds since the kill,
    stage)] up to the restarted worker's first batch."""
    from orchestrator import startup_trace

    trace, killed = tmp / "trace", tmp / "killed"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}", **{startup_trace.VARIABLE: str(trace)})
    env["ORCH_TEST_FAULT"] = json.dumps({"action": "kill", "epoch": 0, "step": 3, "notify": str(killed)})
    sets = {
        "data.train": data / "train.beton",
        "data.val": data / "val.beton",
        "training.epochs": 1,
        "training.max_failures": 1,
        "checkpoint.storage": tmp / "ckpt",
    }
    argv = [str(BIN / "orch"), "submit", str(JOB), *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]
    with open(tmp / "orch.log", "w") as log:
        proc = subprocess.Popen(argv, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=log)
    started = time.time()
    while time.time() - started < 600:
        if killed.exists():
            at = killed.stat().st_mtime
            later = [(t - at, stage) for t, _, stage in startup_trace.read(str(trace)) if t > at]
            if any(stage == FIRST_BATCH for _, stage in later):
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=120)
                return sorted(later)
        if proc.poll() is not None:
            raise SystemExit(
                f"orch exited {proc.returncode} before the restart\n{(tmp / 'orch.log').read_text()[-2000:]}"
            )
        time.sleep(0.1)
    raise SystemExit("no restart within 600 s")


def time_baseline(data: Path, tmp: Path) -> list[tuple[float, str]]:
    trace = tmp / "trace-baseline"
    started = time.time()
    proc = subprocess.Popen([sys.executable, __file__, "--baseline-child", "--data", str(data), "--trace", str(trace)])
    stages = wait_for(trace, started, proc)
    proc.wait(timeout=60)
    return stages


def wait_for(trace: Path, started: float, proc, timeout_s: float = 600, log: Path | None = None):
    """The trace's stages as [(seconds since `started`, stage)] in time order, once the first
    batch is marked."""
    from orchestrator import startup_trace

    while time.time() - started < timeout_s:
        marks = startup_trace.read(str(trace)) if trace.exists() else []
        if any(stage == FIRST_BATCH for _, _, stage in marks):
            return sorted((t - started, stage) for t, _, stage in marks)
        if proc.poll() is not None:
            said = log.read_text()[-2000:] if log else ""
            raise SystemExit(f"{proc.args[1]} exited {proc.returncode} before its first step\n{said}")
        time.sleep(0.05)
    raise SystemExit(f"no first step within {timeout_s:.0f} s")


def baseline_child(data: Path, trace: Path) -> None:
    """The worker's imports, loader and model, in this process; marks the same stages."""
    import torch

    from data_pipeline import build_train_loader, read_dataset_info
    from orchestrator import startup_trace
    from orchestrator.models import build_model
    from orchestrator.spec import load_spec
    from orchestrator.train.optim import build_optimizer

    startup_trace.mark("worker: imports done", str(trace))
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
    startup_trace.mark("worker: loaders built", str(trace))
    model = build_model(spec.model.arch, info.num_classes, **spec.model.options).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, spec.optimizer, spec.optimizer.lr)  # its first one imports torch._dynamo
    startup_trace.mark("worker: model built", str(trace))
    loader.set_epoch(0)
    images, labels = next(iter(loader))
    startup_trace.mark(FIRST_BATCH, str(trace))
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()


if __name__ == "__main__":
    main()
