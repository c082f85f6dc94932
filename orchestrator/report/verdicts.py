"""The paper's findings, checked against the rows: each a {finding, holds, verdict, evidence,
test} that the data can speak to, with the numbers in the evidence.

Each training finding is a Welch t-test (unequal variances, two-sided) on the seeds' training
top-1 errors of two configurations that differ in nothing but the architecture, at the end of
training unless said otherwise:
  depth      among the plain (residual) configurations of one dataset and family, the deepest
             against the shallowest: the deeper plain net trains worse, the deeper ResNet better;
  residual   at every depth with both, the residual net against the plain one. Deeper than 20
             layers it trains better (the paper's 34 layers on ImageNet, 32-110 on CIFAR). At
             SHALLOW_DEPTH or fewer (18 on ImageNet, 20 on CIFAR) the paper finds the two end at
             comparable error, the residual net ahead early in training (Table 2, Figure 4:
             27.94% and 27.88% top-1 at 18 layers): both are tested, the early one at the epoch
             a quarter into training, which the evidence names.
`holds` is True when p < 0.05 and the difference goes the paper's way, False when p < 0.05 and it
goes the other way, None (undecided) with fewer than 2 seeds on a side or p >= 0.05; the
evidence says why. `verdict` says it in words: "holds", "does not hold", "undecided", or "not
testable": a finding about nets trained to convergence (the deeper ResNet trains better; the
shallow pair ends comparable) cannot be tested on runs that stopped at less than
CONVERGED_SHARE of the paper's training (its iterations x its batch: 64,000 x 128 for the CIFAR
nets, 600,000 x 256 for the ImageNet ones), and says at what share they stopped. `test` holds the
difference of the means, its 95% confidence interval, p, the degrees of freedom and n per side.
Ensembles: an ensemble run's top1_error against its best member's (member<i>_top1_error).
"""

import math

from orchestrator.report.paper import CIFAR_RECIPE, ENSEMBLE, IMAGENET_RECIPE

PLAIN_FINDING = "the deeper plain net has the higher training error"
RESIDUAL_FINDING = "the deeper residual net has the lower training error"
SHORTCUT_FINDING = "the residual net has a lower training error than the plain net of its depth"
SHALLOW_FINDING = (
    "at the shallowest depth the plain and residual nets end at comparable training error, "
    "the residual net ahead early in training"
)
ENSEMBLE_FINDING = "the ensemble beats its best member"
ALPHA = 0.05
SHALLOW_DEPTH = 20  # the paper's 18 (ImageNet) and 20 (CIFAR) layers
CONVERGED_SHARE = 0.5  # of the paper's training: where its first lr division comes (32k of 64k on CIFAR)
COMPARABLE_SHARE = 0.1  # "comparable" final errors: within 10% of the plain net's (at least 1 point)
WORDS = {True: "holds", False: "does not hold", None: "undecided"}
NOT_TESTABLE = "not testable"
PAPER_TRAINING = {"cifar": CIFAR_RECIPE, "imagenet": IMAGENET_RECIPE}  # by the nets' family


def verdicts(rows: list[dict], ensembles: list) -> list[dict]:
    found = []
    for residual in (False, True):
        for shallow, deep in _depth_pairs(rows, residual):
            if residual:
                found.append(_converged(_verdict(RESIDUAL_FINDING, deep, shallow, lower=True), deep, shallow))
            else:
                found.append(_verdict(PLAIN_FINDING, deep, shallow, lower=False))
    for plain, residual_row in _same_depth_pairs(rows):
        if plain["depth"] <= SHALLOW_DEPTH:
            found.append(_shallow_verdict(residual_row, plain))
        else:
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


def _verdict(finding: str, row: dict, other: dict, lower: bool, key: str = "final_train_top1_error") -> dict:
    """Does `row` train to a lower (lower=True) or higher error than `other`? `key`: the rows'
    summary of the seeds' errors compared (the final training error unless said)."""
    a, b = row[key], other[key]
    difference = a["mean"] - b["mean"]
    what = "final train top-1 error" if key == "final_train_top1_error" else "train top-1 error"
    evidence = (
        f"{row['dataset']}: {what} {row['name']} ({row['arch']}) {_stat(a)} vs "
        f"{other['name']} ({other['arch']}) {_stat(b)}, difference {difference:+.2f} points"
    )
    test = welch(a["values"], b["values"])
    if test is None:
        few = [f"{r['name']} has {r[key]['n']}" for r in (row, other)]
        few = [text for text, r in zip(few, (row, other)) if r[key]["n"] < 2]
        why = f"needs at least 2 seeds a side ({', '.join(few)})" if few else "the seeds' errors do not vary"
        return _said(finding, None, f"{evidence}; {why}", None)
    low, high = test["ci95"]
    evidence += (
        f", 95% CI [{low:+.2f}, {high:+.2f}], Welch's t-test p = {_p(test['p'])}, n = {test['n'][0]} and {test['n'][1]}"
    )
    if test["p"] >= ALPHA:
        evidence += f"; p >= {ALPHA:g}: the seeds cannot tell them apart"
        return _said(finding, None, evidence, test)
    return _said(finding, (difference < 0) == lower, evidence, test)


def _said(finding: str, holds: bool | None, evidence: str, test: dict | None, verdict: str | None = None) -> dict:
    return {
        "finding": finding,
        "holds": holds,
        "verdict": verdict or WORDS[holds],
        "evidence": evidence,
        "test": test,
    }


def trained_share(row: dict) -> tuple[float, str] | None:
    """How much of the paper's training the row's runs had (their iterations x global batch
    against the paper's, for the nets' family), with the numbers in words; None when unknown."""
    paper = PAPER_TRAINING.get(row.get("family"))
    recipe = row.get("recipe") or {}
    iterations, batch = recipe.get("iterations"), recipe.get("global_batch")
    if paper is None or not iterations or not batch:
        return None
    share = iterations * batch / (paper.iterations * paper.global_batch)
    words = f"{iterations:,} steps of {batch} against the paper's {paper.iterations:,} of {paper.global_batch}"
    return share, words


def _at_share(share: float) -> str:
    return f"{share:.0%}" if share >= 0.01 else f"{share:.1%}"


def _converged(verdict: dict, *rows: dict) -> dict:
    """A finding about nets trained to convergence: not testable on runs that stopped short of
    CONVERGED_SHARE of the paper's training (the statistics stay in the evidence)."""
    shares = [s for s in (trained_share(r) for r in rows) if s is not None]
    if not shares:
        return verdict
    share, words = min(shares)
    if share >= CONVERGED_SHARE:
        return verdict
    why = (
        f"not testable at {_at_share(share)} of the paper's iterations ({words}): it is a finding about nets "
        f"trained to convergence, and needs at least {CONVERGED_SHARE:.0%}"
    )
    return dict(verdict, holds=None, verdict=NOT_TESTABLE, evidence=f"{why}; {verdict['evidence']}")


def early_epoch(row: dict, other: dict) -> int | None:
    """The epoch a quarter into training that both rows' seeds all logged (0-based); None
    without one before the last."""
    epochs = sorted(set(row["train_top1_error_by_epoch"]) & set(other["train_top1_error_by_epoch"]))
    if len(epochs) < 2:
        return None
    return epochs[max(0, math.ceil(len(epochs) / 4) - 1)]


def _shallow_verdict(residual: dict, plain: dict) -> dict:
    """The paper's finding at 18-20 layers: the residual net ahead early (a lower training error
    at the early epoch, p < 0.05), the two comparable at the end (p >= 0.05 and within
    COMPARABLE_SHARE of the plain net's error). A residual net still ahead at the end of runs
    far shorter than the paper's is not testable for the comparison at the end."""
    finding = f"{SHALLOW_FINDING} ({plain['depth']} layers)"
    epoch = early_epoch(residual, plain)
    if epoch is None:
        return _said(finding, None, f"{plain['dataset']}: needs at least 2 epochs logged by every seed", None)
    last = max(residual["train_top1_error_by_epoch"])
    at = f"after epoch {epoch + 1} of {last + 1}"
    early = _verdict(finding, _at_epoch(residual, epoch), _at_epoch(plain, epoch), lower=True, key="train_top1_error")
    end = _verdict(finding, residual, plain, lower=True)
    evidence = f"early, {at}: {early['evidence']}; at the end: {end['evidence']}"
    if early["holds"] is not True:
        said = {None: "the residual net is not shown ahead early", False: "the plain net is ahead early"}
        return _said(finding, early["holds"], f"{said[early['holds']]}; {evidence}", early["test"])
    margin = max(1.0, COMPARABLE_SHARE * plain["final_train_top1_error"]["mean"])
    gap = end["test"]["difference"] if end["test"] else None
    if end["test"] is not None and end["holds"] is None and abs(gap) <= margin:
        return _said(finding, True, f"comparable at the end (within {margin:.2f} points); {evidence}", early["test"])
    if end["test"] is None:
        return _said(finding, None, f"the end cannot be compared; {evidence}", early["test"])
    if end["holds"] is True or (end["holds"] is None and gap < 0):
        share = trained_share(residual)
        if share is not None and share[0] < CONVERGED_SHARE:
            why = (
                f"the residual net is still ahead at the end, {_at_share(share[0])} of the paper's iterations "
                f"({share[1]}): whether they end comparable is not testable before "
                f"{CONVERGED_SHARE:.0%}"
            )
            return _said(finding, None, f"{why}; {evidence}", end["test"], NOT_TESTABLE)
    if end["holds"] is None:  # p >= 0.05 but the means further apart than the margin
        return _said(
            finding, None, f"not shown comparable at the end (margin {margin:.2f} points); {evidence}", end["test"]
        )
    return _said(finding, False, f"not comparable at the end (margin {margin:.2f} points); {evidence}", end["test"])


def _at_epoch(row: dict, epoch: int) -> dict:
    """The row with its seeds' training errors at `epoch` under train_top1_error."""
    return dict(row, train_top1_error=row["train_top1_error_by_epoch"][epoch])


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
    return _said(ENSEMBLE_FINDING, ens < best, evidence, None)
