"""A run's training recipe as the report holds it against the paper's: read from the run's params
(its spec flattened, as MLflow holds it, e.g. "schedule.milestones" = "[82, 123]") and tags, and
the differences that make its numbers not comparable with the paper's, each named.

What counts (the things that move the numbers): the global batch and the learning rate at it,
momentum, weight decay, the schedule (its kind, factor and, where the paper gives them, the
iterations it divides at) and its warm-up, the iterations trained, the augmentation (and the
crop sides on ImageNet), label smoothing, the training images used, stride_in of bottleneck
nets and zero-initialized residual branches. Iterations are epochs times the run's steps per
epoch (its orch.steps_per_epoch tag; else its training images over the global batch) and count
as the paper's within one epoch's steps.
"""

import ast
import math

from orchestrator.tags import STEPS_TAG

TRAIN_IMAGES = {"cifar10": 50_000, "imagenet": 1_281_167}  # the paper's training sets
ABOUT = 0.25  # the paper's "about 400 iterations" of warm-up: within a quarter


def value(params: dict, key: str, default=None):
    """A param as the value the spec held: numbers, booleans, None and lists parsed back."""
    text = params.get(key)
    if text is None:
        return default
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def of_run(params: dict, tags: dict, train_images: int | None) -> dict:
    """The run's recipe: {global_batch, lr (at that batch), ..., steps_per_epoch, iterations,
    warmup ((kind, steps, factor) or None)}. train_images: the benchmark's training set."""
    batch = int(value(params, "training.batch_size", 0)) * int(value(params, "scaling.num_workers", 1))
    limit = value(params, "data.max_train_samples")
    used = min(x for x in (limit, train_images) if x) if (limit or train_images) else None
    steps = value(tags, STEPS_TAG) or (used // batch if used and batch else None)
    epochs = value(params, "training.epochs", 0)
    return {
        "global_batch": batch,
        "lr": float(value(params, "optimizer.lr", 0.1)) * batch / 256,
        "momentum": value(params, "optimizer.momentum", 0.9),
        "nesterov": value(params, "optimizer.nesterov", False),
        "weight_decay": value(params, "optimizer.weight_decay", 1e-4),
        "no_decay_norm_bias": value(params, "optimizer.no_decay_norm_bias", False),
        "label_smoothing": value(params, "optimizer.label_smoothing", 0.0),
        "schedule": value(params, "schedule.kind", "step"),
        "factor": value(params, "schedule.factor", 0.1),
        "milestones": value(params, "schedule.milestones", [30, 60, 90]),
        "steps_per_epoch": steps,
        "iterations": epochs * steps if steps else None,
        "warmup": _warmup(params, steps),
        "augment": value(params, "data.augment", "imagenet"),
        "short_side": _pair(params, "data.paper.short_side_min", 256, "data.paper.short_side_max", 480),
        "lighting": value(params, "data.paper.lighting", 0.1),
        "train_res": _pair(params, "data.resolution.min_res", 160, "data.resolution.max_res", 192),
        "val_res": value(params, "data.resolution.val_res", 224),
        "train_images": used,
        "stride_in": value(params, "model.options.stride_in", "v1.5"),
        "zero_init_residual": value(params, "model.options.zero_init_residual", False),
    }


def _pair(params: dict, first: str, first_default, second: str, second_default) -> tuple:
    return value(params, first, first_default), value(params, second, second_default)


def _warmup(params: dict, steps_per_epoch: int | None) -> tuple | None:
    """(kind, steps, factor) of schedule.warmup, or of the older schedule.warmup_epochs."""
    epochs = value(params, "schedule.warmup.epochs") or value(params, "schedule.warmup_epochs")
    steps = value(params, "schedule.warmup.steps")
    if not epochs and not steps:
        return None
    if steps is None:
        steps = round(epochs * steps_per_epoch) if steps_per_epoch else None
    kind = value(params, "schedule.warmup.kind", "linear")
    factor = value(params, "schedule.warmup.factor", value(params, "schedule.warmup_start_factor", 0.1))
    return kind, steps, factor


def differences(ours: dict, paper, row: dict) -> list[str]:
    """What of `ours` (of_run) differs from the paper's recipe (paper.PaperRecipe) in what
    moves the numbers, each as 'global batch 2048 vs 256'."""
    found = _optimizer(ours, paper) + _schedule(ours, paper) + _data(ours, paper)
    if row["family"] == "imagenet" and row["residual"] and (row["depth"] or 0) >= 50 and ours["stride_in"] != "v1":
        found.append(f"stride_in {ours['stride_in']} vs v1 (the stride in the first 1x1)")
    if ours["zero_init_residual"]:
        found.append("zero-initialized residual branches vs not")
    return found


def _optimizer(ours: dict, paper) -> list[str]:
    found = []
    if ours["global_batch"] != paper.global_batch:
        found.append(f"global batch {ours['global_batch']} vs {paper.global_batch}")
    if not math.isclose(ours["lr"], paper.lr, rel_tol=1e-6):
        found.append(f"lr {ours['lr']:.4g} vs {paper.lr:g}")
    if ours["momentum"] != paper.momentum or ours["nesterov"]:
        found.append(f"momentum {ours['momentum']:g}{' Nesterov' if ours['nesterov'] else ''} vs {paper.momentum:g}")
    if ours["weight_decay"] != paper.weight_decay:
        found.append(f"weight decay {ours['weight_decay']:g} vs {paper.weight_decay:g}")
    if ours["no_decay_norm_bias"]:
        found.append("no weight decay on norms and biases vs on every weight")
    if ours["label_smoothing"]:
        found.append(f"label smoothing {ours['label_smoothing']:g} vs none")
    return found


def _schedule(ours: dict, paper) -> list[str]:
    found = []
    if ours["schedule"] != "step" or ours["factor"] != paper.factor:
        found.append(f"schedule {ours['schedule']} x{ours['factor']:g} vs step x{paper.factor:g}")
    steps = ours["steps_per_epoch"]
    if steps is None:
        found.append("iterations unknown (no orch.steps_per_epoch tag)")
        return found
    if abs(ours["iterations"] - paper.iterations) > steps:
        found.append(f"{ours['iterations']:,} iterations vs {paper.iterations:,}")
    if paper.milestone_iterations and ours["schedule"] == "step":
        at = [round(m * steps) for m in ours["milestones"]]
        expected = paper.milestone_iterations
        if len(at) != len(expected) or any(abs(a - b) > steps for a, b in zip(at, expected)):
            found.append(f"lr divided at iterations {_and(at)} vs {_and(expected)}")
    if paper.warmup_checked and not _same_warmup(ours["warmup"], paper.warmup):
        found.append(f"warm-up {_warmup_text(ours['warmup'])} vs {_warmup_text(paper.warmup)}")
    return found


def _and(numbers) -> str:
    return " and ".join(f"{n:,}" for n in numbers)


def _same_warmup(ours: tuple | None, paper: tuple | None) -> bool:
    if ours is None or paper is None:
        return ours is None and paper is None
    (kind, steps, factor), (paper_kind, paper_steps, paper_factor) = ours, paper
    close = steps is not None and abs(steps - paper_steps) <= ABOUT * paper_steps
    return kind == paper_kind and close and math.isclose(factor, paper_factor)


def _warmup_text(warmup: tuple | None) -> str:
    if warmup is None:
        return "none"
    kind, steps, factor = warmup
    length = f"{steps:,} iterations" if steps is not None else "unknown iterations"
    return f"{kind} {factor:g} x lr for {length}"


def _data(ours: dict, paper) -> list[str]:
    found = []
    if ours["augment"] != paper.augment:
        found.append(f"augmentation {ours['augment']} vs the paper's ({paper.augment})")
    elif paper.augment == "paper":
        if tuple(ours["short_side"]) != (256, 480):
            found.append(f"scale augmentation {list(ours['short_side'])} vs [256, 480]")
        if not ours["lighting"]:
            found.append("no lighting noise vs the paper's color augmentation")
    if paper.crop and tuple(ours["train_res"]) != (paper.crop, paper.crop):
        found.append(f"training crop {'-'.join(map(str, dict.fromkeys(ours['train_res'])))} vs {paper.crop}")
    if paper.crop and ours["val_res"] != paper.crop:
        found.append(f"test crop {ours['val_res']} vs {paper.crop}")
    if ours["train_images"] and ours["train_images"] < paper.train_images:
        found.append(f"{ours['train_images']:,} training images vs {paper.train_images:,}")
    return found
