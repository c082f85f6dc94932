"""The paper's findings, checked against the rows: each a {finding, holds, evidence} that the
data can speak to, with the numbers in the evidence.

Depth: among the plain (residual) configurations of one dataset that differ in nothing but the
architecture, the deepest and the shallowest are compared by their mean final training top-1
error. `holds` is None when both have at least 2 seeds and the means differ by less than the
standard error of their difference: the seeds cannot tell them apart.
Ensembles: an ensemble run's top1_error against its best member's (member<i>_top1_error).
"""

import math

from orchestrator.report.paper import ENSEMBLE

PLAIN_FINDING = "the deeper plain net has the higher training error"
RESIDUAL_FINDING = "the deeper residual net has the lower training error"
ENSEMBLE_FINDING = "the ensemble beats its best member"


def verdicts(rows: list[dict], ensembles: list) -> list[dict]:
    found = []
    for residual in (False, True):
        for shallow, deep in _depth_pairs(rows, residual):
            found.append(_depth_verdict(shallow, deep, residual))
    found.extend(_ensemble_verdict(run) for run in ensembles)
    return [v for v in found if v is not None]


def _depth_pairs(rows: list[dict], residual: bool) -> list[tuple[dict, dict]]:
    """(shallowest, deepest) of each set of rows that differ only in the architecture."""
    sets: dict[str, list[dict]] = {}
    for row in rows:
        if row["residual"] is residual and row["depth"] and row["final_train_top1_error"]["n"]:
            rest = {k: v for k, v in row["config"].items() if k != "model.arch"}
            sets.setdefault(f"{row['dataset']}|{row['family']}|{sorted(rest.items())}", []).append(row)
    pairs = []
    for same in sets.values():
        shallow, deep = min(same, key=lambda r: r["depth"]), max(same, key=lambda r: r["depth"])
        if deep["depth"] > shallow["depth"]:
            pairs.append((shallow, deep))
    return pairs


def _depth_verdict(shallow: dict, deep: dict, residual: bool) -> dict:
    a, b = shallow["final_train_top1_error"], deep["final_train_top1_error"]
    difference = b["mean"] - a["mean"]
    holds = difference < 0 if residual else difference > 0
    noise = _standard_error(a, b)
    evidence = (
        f"{deep['dataset']}: final train top-1 error {deep['name']} ({deep['arch']}) {_stat(b)} vs "
        f"{shallow['name']} ({shallow['arch']}) {_stat(a)}, difference {difference:+.2f} points"
    )
    if noise is not None and abs(difference) < noise:
        holds = None
        evidence += f", within its standard error ({noise:.2f}): the seeds cannot tell them apart"
    return {"finding": RESIDUAL_FINDING if residual else PLAIN_FINDING, "holds": holds, "evidence": evidence}


def _standard_error(a: dict, b: dict) -> float | None:
    if a["n"] < 2 or b["n"] < 2:
        return None
    return math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])


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
    return {"finding": ENSEMBLE_FINDING, "holds": ens < best, "evidence": evidence}
