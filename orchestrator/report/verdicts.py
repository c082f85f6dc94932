"""The paper's findings, checked against the rows: each a {finding, holds, evidence, test} that
the data can speak to, with the numbers in the evidence.

Each training finding is a Welch t-test (unequal variances, two-sided) on the seeds' final
training top-1 errors of two configurations that differ in nothing but the architecture:
  depth      among the plain (residual) configurations of one dataset and family, the deepest
             against the shallowest: the deeper plain net trains worse, the deeper ResNet better;
  residual   at every depth with both, the residual net against the plain one: it trains better.
`holds` is True when p < 0.05 and the difference goes the paper's way, False when p < 0.05 and it
goes the other way, None (undecided) with fewer than 2 seeds on a side or p >= 0.05; the
evidence says why. `test` holds the difference of the means, its 95% confidence interval, p,
the degrees of freedom and n per side.
Ensembles: an ensemble run's top1_error against its best member's (member<i>_top1_error).
"""

import math

from orchestrator.report.paper import ENSEMBLE

PLAIN_FINDING = "the deeper plain net has the higher training error"
RESIDUAL_FINDING = "the deeper residual net has the lower training error"
SHORTCUT_FINDING = "the residual net has a lower training error than the plain net of its depth"
ENSEMBLE_FINDING = "the ensemble beats its best member"
ALPHA = 0.05


def verdicts(rows: list[dict], ensembles: list) -> list[dict]:
    found = []
    for residual in (False, True):
        for shallow, deep in _depth_pairs(rows, residual):
            found.append(_verdict(RESIDUAL_FINDING if residual else PLAIN_FINDING, deep, shallow, lower=residual))
    for plain, residual_row in _same_depth_pairs(rows):
        found.append(_verdict(SHORTCUT_FINDING, residual_row, plain, lower=True))
    found.extend(_ensemble_verdict(run) for run in ensembles)
    return [v for v in found if v is not None]


def _comparable(rows: list[dict], residual: bool | None, drop_options: bool) -> dict[str, list[dict]]:
    """Rows (of one kind, or both for None) grouped by what they share beyond the architecture."""
    sets: dict[str, list[dict]] = {}
    for row in rows:
        if row["depth"] and row["final_train_top1_error"]["n"] and (residual is None or row["residual"] is residual):
            rest = {
                k: v
                for k, v in row["config"].items()
                if k != "model.arch" and not (drop_options and k.startswith("model.options"))
            }
            sets.setdefault(f"{row['dataset']}|{row['family']}|{sorted(rest.items(), key=str)}", []).append(row)
    return sets


def _depth_pairs(rows: list[dict], residual: bool) -> list[tuple[dict, dict]]:
    """(shallowest, deepest) of each set of rows that differ only in the architecture."""
    pairs = []
    for same in _comparable(rows, residual, drop_options=False).values():
        shallow, deep = min(same, key=lambda r: r["depth"]), max(same, key=lambda r: r["depth"])
        if deep["depth"] > shallow["depth"]:
            pairs.append((shallow, deep))
    return pairs


def _same_depth_pairs(rows: list[dict]) -> list[tuple[dict, dict]]:
    """(plain, residual) rows of one depth that differ only in the architecture (and its options)."""
    pairs = []
    for same in _comparable([r for r in rows if r["residual"] is not None], None, drop_options=True).values():
        for plain in (r for r in same if r["residual"] is False):
            pairs += [(plain, r) for r in same if r["residual"] and r["depth"] == plain["depth"]]
    return sorted(pairs, key=lambda pair: (pair[0]["dataset"], pair[0]["depth"]))


def welch(a: list[float], b: list[float]) -> dict | None:
    """Welch's t-test of mean(a) - mean(b): {difference, ci95, p, df, n}; None with fewer than
    2 values on a side, or no spread on either side (the test is undefined)."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    result = stats.ttest_ind(a, b, equal_var=False)
    if math.isnan(result.pvalue):
        return None
    low, high = result.confidence_interval(1 - ALPHA)
    return {
        "difference": sum(a) / len(a) - sum(b) / len(b),
        "ci95": [float(low), float(high)],
        "p": float(result.pvalue),
        "df": float(result.df),
        "n": [len(a), len(b)],
    }


def _verdict(finding: str, row: dict, other: dict, lower: bool) -> dict:
    """Does `row` train to a lower (lower=True) or higher error than `other`?"""
    a, b = row["final_train_top1_error"], other["final_train_top1_error"]
    difference = a["mean"] - b["mean"]
    evidence = (
        f"{row['dataset']}: final train top-1 error {row['name']} ({row['arch']}) {_stat(a)} vs "
        f"{other['name']} ({other['arch']}) {_stat(b)}, difference {difference:+.2f} points"
    )
    test = welch(a["values"], b["values"])
    if test is None:
        few = [f"{r['name']} has {r['final_train_top1_error']['n']}" for r in (row, other)]
        few = [text for text, r in zip(few, (row, other)) if r["final_train_top1_error"]["n"] < 2]
        why = f"needs at least 2 seeds a side ({', '.join(few)})" if few else "the seeds' errors do not vary"
        return {"finding": finding, "holds": None, "evidence": f"{evidence}; {why}", "test": None}
    low, high = test["ci95"]
    evidence += (
        f", 95% CI [{low:+.2f}, {high:+.2f}], Welch's t-test p = {_p(test['p'])}, n = {test['n'][0]} and {test['n'][1]}"
    )
    if test["p"] >= ALPHA:
        evidence += f"; p >= {ALPHA:g}: the seeds cannot tell them apart"
        return {"finding": finding, "holds": None, "evidence": evidence, "test": test}
    return {"finding": finding, "holds": (difference < 0) == lower, "evidence": evidence, "test": test}


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def _stat(s: dict) -> str:
    std = f"{s['std']:.2f}" if s["std"] is not None else "n/a"
    return f"{s['mean']:.2f}% ± {std} (n={s['n']})"


def _ensemble_verdict(run) -> dict | None:
    metrics = run.data.metrics
    members = {k: v for k, v in metrics.items() if k.startswith("member") and k.endswith("_top1_error")}
    if "top1_error" not in metrics or not members:
        return None
    best_key = min(members, key=members.get)
    ens, best = metrics["top1_error"], members[best_key]
    evidence = (
        f"ensemble run {run.info.run_id} ({run.info.run_name}): top-1 error {ens:.2f}% vs best member "
        f"{best_key.removesuffix('_top1_error')} {best:.2f}% ({ens - best:+.2f} points, {len(members)} members)"
    )
    if "top5_error" in metrics:
        evidence += (
            f"; top-5 {metrics['top5_error']:.2f}% (the paper's {ENSEMBLE.table} ensemble: {ENSEMBLE.top5_error}% "
            f"top-5 on ImageNet's test set, not comparable: another split and models)"
        )
    return {"finding": ENSEMBLE_FINDING, "holds": ens < best, "evidence": evidence, "test": None}
