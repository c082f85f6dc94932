"""One row per configuration: its seeds' errors as mean ± sample std (n), mean curves, recipe.

All errors are in percent, as orch logs them. "final" is a run's value at its last logged epoch,
the end of training: what the paper reports and what the report holds against it. "best-epoch
val top-1" is a run's best_val_top1_error (read at the epoch its checkpoint rule chose,
orchestrator/recovery/best.py), else the lowest val_top1_error it logged: an epoch chosen on the very set
it is measured on (for CIFAR-10 and Fashion-MNIST their test set), so an optimistic number, shown
under that label and never beside the paper's. The std is the sample std (ddof=1), None for n=1.
"""

import statistics

from orchestrator.report import recipes
from orchestrator.report.configs import benchmark, describe_arch, group_runs, label

# `orch evaluate --tta` protocols whose metrics (eval_<tta>_top1_error) the paper's tables use
# (orchestrator/evaluation/tta.py): 10crop for Tables 2-3, multiscale for Table 4.
EVAL_PROTOCOLS = ("10crop", "multiscale")


def summarize(values) -> dict:
    """{mean, std, n, values} over the values that exist; std is the sample std, None for fewer than 2."""
    present = [float(v) for v in values if v is not None]
    n = len(present)
    return {
        "mean": statistics.fmean(present) if n else None,
        "std": statistics.stdev(present) if n >= 2 else None,
        "n": n,
        "values": present,
    }


def final(history: dict) -> float | None:
    """The value at the last logged epoch."""
    return history[max(history)] if history else None


def best_epoch_val(run) -> float:
    return run.metrics.get("best_val_top1_error", min(run.history["val_top1_error"].values()))


def by_epoch(histories: list[dict]) -> dict[int, dict]:
    """{epoch: summarize(the seeds' values)} over the epochs every history has."""
    if not histories or not all(histories):
        return {}
    epochs = sorted(set.intersection(*(set(h) for h in histories)))
    return {e: summarize(h[e] for h in histories) for e in epochs}


def mean_curve(histories: list[dict]) -> tuple[list[int], list[float]]:
    """(epochs, means) over the epochs every history has."""
    if not histories or not all(histories):
        return [], []
    epochs = sorted(set.intersection(*(set(h) for h in histories)))
    return epochs, [statistics.fmean(h[e] for h in histories) for e in epochs]


def build_rows(trained: list) -> list[dict]:
    """The table's rows, by dataset, then plain before residual, then depth."""
    rows = [_row(config, runs) for config, runs in group_runs(trained)]
    return sorted(rows, key=lambda r: (r["dataset"], r["residual"] is not False, r["depth"] or 0, r["label"]))


def _row(config: dict, runs: list) -> dict:
    arch = describe_arch(runs[0].params)
    epochs, val = mean_curve([run.history["val_top1_error"] for run in runs])
    train_epochs, train = mean_curve([run.history["train_top1_error"] for run in runs])
    bench = benchmark(runs[0].dataset, runs[0].params)
    return {
        "label": label(arch, config),
        **arch,
        "config": config,
        "dataset": runs[0].dataset,
        "benchmark": bench,
        "n": len(runs),
        "run_ids": [run.run_id for run in runs],
        "seeds": [run.params.get("training.seed") for run in runs],
        "final_val_top1_error": summarize(final(run.history["val_top1_error"]) for run in runs),
        "final_val_top5_error": summarize(final(run.history["val_top5_error"]) for run in runs),
        "final_train_top1_error": summarize(final(run.history["train_top1_error"]) for run in runs),
        "train_top1_error_by_epoch": by_epoch([run.history["train_top1_error"] for run in runs]),
        "best_epoch_val_top1_error": summarize(best_epoch_val(run) for run in runs),
        "eval": _evaluations(runs),
        "recipe": recipes.of_run(runs[0].params, runs[0].tags, recipes.TRAIN_IMAGES.get(bench)),
        "curves": {
            "val_top1_error": {"epochs": epochs, "mean": val},
            "train_top1_error": {"epochs": train_epochs, "mean": train},
        },
    }


def _evaluations(runs: list) -> dict:
    """{protocol: {top1_error, top5_error}} for the `orch evaluate` protocols every seed has."""
    found = {}
    for tta in EVAL_PROTOCOLS:
        key = f"eval_{tta}_top1_error"
        if all(key in run.metrics for run in runs):
            found[tta] = {
                "top1_error": summarize(run.metrics[key] for run in runs),
                "top5_error": summarize(run.metrics.get(f"eval_{tta}_top5_error") for run in runs),
            }
    return found
