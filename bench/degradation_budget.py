"""How the degradation gaps grow with SGD steps on Fashion-MNIST: the measurement behind the
budget of jobs/sweeps/degradation_fashion.yaml.

    nice -n 19 .venv/bin/python bench/degradation_budget.py [--steps 800] [--seeds 0,1,2]
        [--schedule constant|step] [--samples 12000] [--out budget.json]
    .venv/bin/python bench/degradation_budget.py --summarize budget.json     # a finished or partial one

orch's own CIFAR nets (orchestrator.models) in a plain PyTorch loop, so that no part of orch
but the models is measured: the paper's CIFAR recipe (batch 128, lr 0.1, momentum 0.9, weight
decay 1e-4; `--schedule step` divides the lr by 10 at 50% and 75% of --steps, as the paper's
32k/48k of 64k iterations) and its augmentation (4 black pixels of padding, a random crop,
a horizontal flip). Each (net, seed) trains in its own process with one torch thread, two at a
time, as the sweep's trials do. The training error is counted as orch counts it: on the batches
as they are trained, in train mode, before each step's update; at each checkpoint it is the
error over the last --window steps (constant lr), or over the last epoch of the sweep's
data (--schedule step, where it is printed at --steps only).

Printed per checkpoint: each net's mean ± std over the seeds, and the three comparisons the
report tests (Welch's t-test, two-sided): plain-56 against plain-20, ResNet-20 against
plain-20, ResNet-56 against plain-56. The results are also written to --out as JSON, one
entry per (net, seed) as it finishes, so a long measurement can be read while it runs.
"""

import argparse
import json
import os
import statistics
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist")
NETS = ("cifar_plain20", "cifar_resnet20", "cifar_plain56", "cifar_resnet56")
PAIRS = (
    ("deeper plain trains worse", "cifar_plain56", "cifar_plain20", "+"),
    ("residual-20 trains better", "cifar_resnet20", "cifar_plain20", "-"),
    ("residual-56 trains better", "cifar_resnet56", "cifar_plain56", "-"),
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--nets", default=",".join(NETS))
    p.add_argument("--schedule", choices=["constant", "step"], default="constant")
    p.add_argument("--samples", type=int, default=12000, help="training images (the first N)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="at this batch size")
    p.add_argument("--window", type=int, default=50, help="steps the training error is counted over")
    p.add_argument("--every", type=int, default=100, help="checkpoint every N steps")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast, as orch's steps")
    p.add_argument("--out", type=Path, default=Path("degradation_budget.json"))
    p.add_argument("--summarize", type=Path, default=None, help="print the summary of an --out file, train nothing")
    return p.parse_args(argv)


def load_fashion(samples: int):
    from data_pipeline.fashion_mnist import load_split

    images, labels = load_split(FASHION, "train")
    return images[:samples].copy(), labels[:samples].astype(np.int64)


def augment(batch, generator):
    """The cifar view on a uint8 (N, 28, 28) batch: pad 4 with black, random 28x28 crop, flip."""
    import torch

    n, h, w = batch.shape
    padded = torch.zeros((n, h + 8, w + 8), dtype=torch.uint8)
    padded[:, 4 : 4 + h, 4 : 4 + w] = batch
    ys = torch.randint(0, 9, (n,), generator=generator)
    xs = torch.randint(0, 9, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    out = torch.empty_like(batch)
    for i in range(n):
        crop = padded[i, ys[i] : ys[i] + h, xs[i] : xs[i] + w]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out


def lr_at(step: int, args) -> float:
    if args.schedule == "constant":
        return args.lr
    return args.lr * 0.1 ** sum(step >= m * args.steps for m in (0.5, 0.75))


def train_one(task) -> dict:
    """One net, one seed: the training error at each checkpoint."""
    import torch
    import torch.nn.functional as F

    from orchestrator.models import build_model

    arch, seed, args = task
    torch.set_num_threads(1)
    images, labels = load_fashion(args.samples)
    mean, std = images.mean() / 255, images.std() / 255
    torch.manual_seed(seed)
    model = build_model(arch, 10).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed + 1000)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    per_epoch = args.samples // args.batch_size
    wrong, seen, points, began, cpu = [], [], {}, time.perf_counter(), time.process_time()
    step = 0
    while step < args.steps:
        order = torch.randperm(args.samples, generator=generator)
        for b in range(per_epoch):
            if step >= args.steps:
                break
            index = order[b * args.batch_size : (b + 1) * args.batch_size]
            x = (augment(x_all[index], generator).float() / 255 - mean) / std
            x = x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, args)
            with autocast:
                logits = model(x)
                loss = F.cross_entropy(logits, y_all[index])
            wrong.append(int((logits.argmax(1) != y_all[index]).sum()))
            seen.append(len(index))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step % args.every == 0 or step == args.steps:
                span = args.window if args.schedule == "constant" else per_epoch
                points[step] = 100.0 * sum(wrong[-span:]) / sum(seen[-span:])
    seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu
    return {
        "arch": arch,
        "seed": seed,
        "errors": points,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "steps": args.steps,
    }


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    from scipy import stats

    test = stats.ttest_ind(a, b, equal_var=False)
    return statistics.fmean(a) - statistics.fmean(b), float(test.pvalue)


def summary(results: list[dict], args) -> list[str]:
    lines = []
    steps = sorted({s for r in results for s in r["errors"]})
    for step in steps:
        errors = {net: [r["errors"][step] for r in results if r["arch"] == net and step in r["errors"]] for net in NETS}
        cells = [
            f"{net.removeprefix('cifar_')} {statistics.fmean(v):.2f} ± {statistics.stdev(v):.2f}"
            for net, v in errors.items()
            if len(v) >= 2
        ]
        tests = []
        for name, a, b, sign in PAIRS:
            if len(errors[a]) >= 2 and len(errors[b]) >= 2:
                diff, p = welch(errors[a], errors[b])
                ok = p < 0.05 and (diff > 0) == (sign == "+")
                tests.append(f"{name}: {diff:+.2f} p={p:.3f}{' *' if ok else ''}")
        lines.append(f"step {step}: " + ", ".join(cells) + " | " + "; ".join(tests))
    per_step = {r["arch"]: r.get("cpu_seconds", r["seconds"]) / r["steps"] for r in results}
    lines.append("CPU seconds per step, one thread: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(per_step.items())))
    return lines


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.summarize:
        results = json.loads(args.summarize.read_text())
        for r in results:  # JSON keys are strings
            r["errors"] = {int(k): v for k, v in r["errors"].items()}
        print("\n".join(summary(results, args)))
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    nets = args.nets.split(",")
    tasks = [(arch, seed, args) for seed in seeds for arch in sorted(nets, key=lambda n: "56" not in n)]
    print(
        f"{len(tasks)} runs: {', '.join(nets)} x seeds {seeds}; {args.steps} steps of {args.batch_size}, "
        f"lr {args.lr} ({args.schedule}), {args.samples} images, {args.precision}; {os.cpu_count()} CPUs, "
        f"{args.processes} at a time",
        flush=True,
    )
    results = []
    with get_context("spawn").Pool(args.processes) as pool:
        for result in pool.imap_unordered(train_one, tasks):
            results.append(result)
            args.out.write_text(json.dumps(results, indent=1))
            print(f"{result['arch']} seed {result['seed']}: {result['errors']} ({result['seconds']:.0f} s)", flush=True)
    print("\n".join(summary(results, args)))


if __name__ == "__main__":
    main()
