"""The paper's numbers (He et al. 2015, arXiv:1512.03385) as data, and which of them a row can
be held against.

Every number is a top-1 (and top-5, where given) error in percent, at the end of training.
Table 2 and Table 3 are 10-crop testing on ImageNet val; Table 4 is single models with the
multi-scale fully convolutional testing of section 3.4 on ImageNet val; Table 5's ensemble is on
the test set; Table 6 is CIFAR-10 test error of the stored 32x32 image: one run per depth, and
for ResNet-110 the best of 5 runs (6.43) and their mean ± std (6.61 ± 0.16). The paper's
ResNet-18/34 of Table 2 use shortcut option A; ResNet-50/101/152 use option B. Plain nets have no
Table 6 numbers (Fig. 6 only).

What a row is held against: its final error (the last epoch's), mean ± std over its seeds, and
the best of N only where the paper gives a best of N (ResNet-110). A training run's val_* metrics
are single-crop: the stored image on CIFAR, the center crop on ImageNet. That is Table 6's
protocol; for ImageNet it is not 10-crop, so Tables 2-4 become comparable only through `orch
evaluate --tta 10crop` (Tables 2-3) or `--tta multiscale` (Table 4), whose eval_<tta>_top1_error
the row then uses. A CIFAR-10 run's validation set is taken to be CIFAR-10's test set, as
jobs/cifar_*.yaml prepare it. A row is comparable only when its recipe is the paper's in what
moves the numbers (orchestrator/report/recipes.py: batch and lr, schedule and warm-up,
iterations, augmentation, label smoothing, stride_in, the data), its shortcut is the table's
and its test protocol is.
"""

from dataclasses import asdict, dataclass, replace

from orchestrator.report import recipes

IMAGENET_VAL = ("imagenet", "val")
TEN_CROP = "10-crop"
MULTI_SCALE = "multi-scale fully-convolutional (Sec. 3.4)"
CIFAR_SINGLE = "single-crop 32x32"


@dataclass(frozen=True)
class PaperResult:
    table: str
    model: str
    residual: bool
    depth: int | None
    shortcut: str | None  # None: plain, or not said
    dataset: str  # "imagenet" | "cifar10"
    split: str  # "val" | "test"
    protocol: str
    top1_error: float | None
    top5_error: float | None = None
    statistic: str = "single model"
    mean_std: tuple[float, float, int] | None = None  # (mean, std, runs)


def _imagenet(table, model, residual, depth, shortcut, top1, top5=None, protocol=TEN_CROP) -> PaperResult:
    return PaperResult(table, model, residual, depth, shortcut, *IMAGENET_VAL, protocol, top1, top5)


def _cifar(depth, top1, mean_std=None) -> PaperResult:
    statistic = "best of 5 runs" if mean_std else "one run"
    return PaperResult(
        "Table 6", f"ResNet-{depth}", True, depth, "A", "cifar10", "test", CIFAR_SINGLE, top1, None, statistic, mean_std
    )


ENSEMBLE = PaperResult(
    "Table 5",
    "ensemble of 6 models",
    True,
    None,
    None,
    "imagenet",
    "test",
    "ensemble, top-5 from the ILSVRC test server",
    None,
    3.57,
)
RESULTS = (
    _imagenet("Table 2", "plain-18", False, 18, None, 27.94),
    _imagenet("Table 2", "plain-34", False, 34, None, 28.54),
    _imagenet("Table 2", "ResNet-18", True, 18, "A", 27.88),
    _imagenet("Table 2", "ResNet-34", True, 34, "A", 25.03),
    _imagenet("Table 3", "plain-34", False, 34, None, 28.54, 10.02),
    _imagenet("Table 3", "ResNet-34 A", True, 34, "A", 25.03, 7.76),
    _imagenet("Table 3", "ResNet-34 B", True, 34, "B", 24.52, 7.46),
    _imagenet("Table 3", "ResNet-34 C", True, 34, "C", 24.19, 7.40),
    _imagenet("Table 3", "ResNet-50", True, 50, "B", 22.85, 6.71),
    _imagenet("Table 3", "ResNet-101", True, 101, "B", 21.75, 6.05),
    _imagenet("Table 3", "ResNet-152", True, 152, "B", 21.43, 5.71),
    _imagenet("Table 4", "ResNet-34 B", True, 34, "B", 21.84, 5.71, MULTI_SCALE),
    _imagenet("Table 4", "ResNet-34 C", True, 34, "C", 21.53, 5.60, MULTI_SCALE),
    _imagenet("Table 4", "ResNet-50", True, 50, "B", 20.74, 5.25, MULTI_SCALE),
    _imagenet("Table 4", "ResNet-101", True, 101, "B", 19.87, 4.60, MULTI_SCALE),
    _imagenet("Table 4", "ResNet-152", True, 152, "B", 19.38, 4.49, MULTI_SCALE),
    ENSEMBLE,
    _cifar(20, 8.75),
    _cifar(32, 7.51),
    _cifar(44, 7.17),
    _cifar(56, 6.97),
    _cifar(110, 6.43, (6.61, 0.16, 5)),
    _cifar(1202, 7.93),
)


@dataclass(frozen=True)
class PaperRecipe:
    """How the paper trained for a table: what recipes.differences() holds a run against."""

    dataset: str
    global_batch: int
    lr: float  # at that batch
    iterations: int
    milestone_iterations: tuple[int, ...] | None  # None: "divided by 10 when the error plateaus"
    augment: str  # orch's data.augment that is the paper's
    train_images: int
    momentum: float = 0.9
    weight_decay: float = 1e-4
    factor: float = 0.1
    warmup: tuple | None = None  # (kind, steps, factor of the lr)
    warmup_checked: bool = True
    crop: int | None = None  # ImageNet: the training and test crop side


# Section 4.2: batch 128, lr 0.1, /10 at 32k and 48k iterations, stopped at 64k, on the 50k
# training images; ResNet-110 warms up at 0.01 "until the training error is below 80% (about 400
# iterations)"; the 1202-layer net is "trained as described above" (its warm-up is not checked).
CIFAR_RECIPE = PaperRecipe("cifar10", 128, 0.1, 64_000, (32_000, 48_000), "cifar", recipes.TRAIN_IMAGES["cifar10"])
RESNET110_WARMUP = ("constant", 400, 0.1)
# Section 3.4: batch 256, lr 0.1 divided by 10 when the error plateaus, up to 60e4 iterations,
# scale augmentation, 224 crops, color augmentation; no warm-up.
IMAGENET_RECIPE = PaperRecipe("imagenet", 256, 0.1, 600_000, None, "paper", recipes.TRAIN_IMAGES["imagenet"], crop=224)


def recipe_for(row: dict) -> PaperRecipe | None:
    """The paper's recipe for the row's benchmark and depth."""
    if row["benchmark"] == "imagenet":
        return IMAGENET_RECIPE
    if row["benchmark"] != "cifar10":
        return None
    if row["depth"] == 110:
        return replace(CIFAR_RECIPE, warmup=RESNET110_WARMUP)
    return replace(CIFAR_RECIPE, warmup_checked=row["depth"] != 1202)


def as_dicts() -> list[dict]:
    return [asdict(result) for result in RESULTS]


def compare(row: dict) -> dict | None:
    """The paper's number for the row's setting, ours beside it (final errors, mean ± std over
    seeds; best of N where the paper gives one) and whether they compare (with every reason
    when not); None where the paper has no number for it (other data, plain CIFAR nets)."""
    if row["benchmark"] == "cifar10" and row["family"] == "cifar":
        return _cifar_comparison(row)
    if row["benchmark"] == "imagenet" and row["family"] == "imagenet":
        return _imagenet_comparison(row)
    return None


def _cifar_comparison(row: dict) -> dict | None:
    found = _find("Table 6", row, exact_shortcut=False)
    if found is None:
        return None
    ours = row["final_val_top1_error"]
    comparison = _comparison(found, row, ours, "final val top-1, single-crop", _shortcut_reasons(found, row))
    if found.mean_std:  # the paper's best of N: ours beside it, of the same final errors
        values = ours["values"]
        winner = min(range(len(values)), key=values.__getitem__)
        best = {"value": values[winner], "run_id": row["run_ids"][winner], "n": len(values)}
        comparison["ours_best_of_n"] = best
        if comparison["comparable"]:
            comparison["best_of_n_difference"] = round(best["value"] - found.top1_error, 4)
    return comparison


def _imagenet_comparison(row: dict) -> dict | None:
    multiscale = _find("Table 4", row, exact_shortcut=False)
    if "multiscale" in row["eval"] and multiscale:
        ours = row["eval"]["multiscale"]["top1_error"]
        return _comparison(multiscale, row, ours, "eval_multiscale top-1", _shortcut_reasons(multiscale, row))
    found = _find("Table 3", row, exact_shortcut=True) or _find("Table 2", row, exact_shortcut=True)
    found = found or _find("Table 3", row, exact_shortcut=False) or _find("Table 2", row, exact_shortcut=False)
    if found is None:
        return None
    reasons = _shortcut_reasons(found, row)
    if "10crop" in row["eval"]:
        return _comparison(found, row, row["eval"]["10crop"]["top1_error"], "eval_10crop top-1", reasons)
    reasons.append("protocol (single-crop vs 10-crop; run `orch evaluate --tta 10crop`)")
    return _comparison(found, row, row["final_val_top1_error"], "final val top-1, single-crop", reasons)


def _find(table: str, row: dict, exact_shortcut: bool) -> PaperResult | None:
    for result in RESULTS:
        same = result.table == table and result.residual == row["residual"] and result.depth == row["depth"]
        if same and (not exact_shortcut or result.shortcut == row["shortcut"]):
            return result
    return None


def _shortcut_reasons(found: PaperResult, row: dict) -> list[str]:
    if found.shortcut == row["shortcut"]:
        return []
    return [f"shortcut {row['shortcut']} (the paper's {found.model} uses {found.shortcut})"]


def _comparison(found: PaperResult, row: dict, ours: dict, statistic: str, reasons: list) -> dict:
    """The paper's number and ours ({mean, std, n}) beside it; not comparable, with the recipe's
    differences first, then the other reasons, when anything that matters differs."""
    recipe = recipe_for(row)
    differences = recipes.differences(row["recipe"], recipe, row) if recipe else []
    reasons = ([f"recipe ({', '.join(differences)})"] if differences else []) + reasons
    if ours["mean"] is None:
        reasons.append("no value of ours")
    comparable = not reasons
    paper_mean = found.mean_std[0] if found.mean_std else found.top1_error
    return {
        "table": found.table,
        "model": found.model,
        "dataset": found.dataset,
        "split": found.split,
        "protocol": found.protocol,
        "statistic": found.statistic,
        "paper_top1_error": found.top1_error,
        "paper_top5_error": found.top5_error,
        "paper_mean_std": list(found.mean_std) if found.mean_std else None,
        "ours": {k: ours[k] for k in ("mean", "std", "n")},
        "ours_statistic": f"{statistic}, mean ± std over {ours['n']} seeds",
        "ours_best_of_n": None,
        "comparable": comparable,
        "reasons": reasons,
        "reason": None if comparable else "not comparable: " + "; ".join(reasons),
        "difference": round(ours["mean"] - paper_mean, 4) if comparable else None,
    }
