"""What checking for preemption notices costs training: the same 2-worker orch job with the
notice check every 20 steps (training.notice_every_n_steps, its default) and with it off.

    .venv/bin/python bench/notices.py [--samples 10000] [--epochs 3] [--every 20]   # about 8 minutes

First, one check's latency: a 2-worker Ray Train run times --checks calls of the check every
rank makes (Ray's preemption barrier, ray.train.get_preemption_info(), and one all_reduce of
the ranks' own requests). Then the job (ResNet-20 on Fashion-MNIST, 1 CPU a worker) runs three
times on one local Ray: off, on, off; images/s is the mean over each run's epochs after the
first, and the two runs without checks are averaged, so that drift in the machine's speed
weighs on both sides. The last line is `ratio: X` (with checks over without).
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data_pipeline import write_fashion_mnist  # noqa: E402
from orchestrator.spec import load_spec  # noqa: E402

OFF = 10**9  # a check at step 0 only


def check_latency(checks: int) -> float:
    """Seconds one NoticeCheck.check() takes on 2 workers (rank 0's mean)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def time_checks(config):
        import ray.train

        from orchestrator.train.notices import NoticeCheck

        check = NoticeCheck(None, every=1)
        check.check()  # the first builds the group's barrier
        began = time.perf_counter()
        for _ in range(config["checks"]):
            check.check()
        if ray.train.get_context().get_world_rank() == 0:  # Ray's Result holds no metrics without a checkpoint
            Path(config["out"]).write_text(str((time.perf_counter() - began) / config["checks"]))

    out = Path(tempfile.mkdtemp(prefix="orch-bench-notices-"))
    TorchTrainer(
        time_checks,
        train_loop_config={"checks": checks, "out": str(out / "seconds")},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=str(out)),
    ).fit()
    return float((out / "seconds").read_text())


def images_per_second(spec) -> float:
    """A run through orch, as `orch submit` trains it: mean images/s of the epochs after the first."""
    from orchestrator.runs import tracking
    from orchestrator.targets.local import run_local

    outcome = run_local(spec, progress_to_stderr=True)
    history = tracking.epoch_history(tracking.tracking_uri(spec), outcome.run_id, "train_images_per_second")
    rates = [history[epoch] for epoch in sorted(history)][1:]
    return sum(rates) / len(rates)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10000, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="per run; at least 2 (the first is left out)")
    parser.add_argument("--every", type=int, default=20, help="training.notice_every_n_steps when checks are on")
    parser.add_argument("--checks", type=int, default=200, help="checks timed for the latency")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch of each run is left out")
    work = Path(tempfile.mkdtemp(prefix="orch-bench-"))
    data = work / "fmnist"
    write_fashion_mnist(Path("/usr/share/datasets/fashion-mnist"), data)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")

    def spec(every: int):
        return load_spec(
            ROOT / "jobs/demo_fashion_mnist.yaml",
            [
                f"data.train={data / 'train.beton'}",
                f"data.val={data / 'val.beton'}",
                f"data.max_train_samples={args.samples}",
                f"training.epochs={args.epochs}",
                f"training.notice_every_n_steps={every}",
                "scaling.num_workers=2",
                "scaling.cpus_per_worker=1",
                f"checkpoint.storage={work / 'ckpt'}",
                "tracking.system_metrics=false",
                "tracking.log_model=false",
            ],
        )

    from orchestrator.targets import cluster

    started = time.perf_counter()
    cluster.connect()
    latency = check_latency(args.checks)
    off_before = images_per_second(spec(OFF))
    on = images_per_second(spec(args.every))
    off_after = images_per_second(spec(OFF))
    off = (off_before + off_after) / 2
    steps_per_second = on / (2 * spec(args.every).training.batch_size)
    print(f"one check on 2 workers:        {latency * 1000:.1f} ms (mean of {args.checks})")
    print(f"checks every {args.every} steps:        {on:,.0f} images/s ({steps_per_second:.2f} steps/s)")
    print(f"no checks:                     {off:,.0f} images/s (before {off_before:,.0f}, after {off_after:,.0f})")
    print(f"total bench time {time.perf_counter() - started:.0f}s", file=sys.stderr)
    print(f"ratio: {on / off:.3f}")


if __name__ == "__main__":
    main()
