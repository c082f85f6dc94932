"""Turning views and members into scores, and scores into exact counts.

Everything is kept as log-probabilities: a member's score for an image is the log of the mean
of its views' softmax outputs (its loss is the negative log of that mean at the label).

Combining members (weights normalized to sum to 1):
  softmax  log of the weighted mean of the members' probabilities (the default).
  logits   softmax of the weighted mean of the members' log-probabilities. Without TTA this is
           exactly the weighted mean of their logits (log_softmax only shifts each image's
           logits by a constant); with TTA, the log of each member's view-averaged softmax
           stands in for its logits.
  vote     the most (weighted) votes for a member's top-1 label wins; ties go to the higher
           weighted-mean softmax, then to the lower label. Top-5 ranks classes the same way
           (votes, then mean softmax). Votes give no probabilities, so vote reports no loss.
"""

import math

import torch
import torch.nn.functional as F

from orchestrator.errors import OrchError
from orchestrator.train.metrics import counts_to_metrics

COMBINES = ("softmax", "logits", "vote")


def parse_weights(text: str | None, count: int) -> list[float]:
    """Weights from "w1,w2,...", one per member, positive, normalized to sum to 1."""
    if text is None:
        return [1.0 / count] * count
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        raise OrchError(f"--weights {text}: expected comma-separated numbers, e.g. 1,1,2") from None
    if len(weights) != count:
        raise OrchError(f"--weights {text}: {len(weights)} weights for {count} runs; give one per run")
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise OrchError(f"--weights {text}: every weight must be a positive number")
    total = sum(weights)
    return [w / total for w in weights]


def mean_softmax_log(view_logits: list[torch.Tensor]) -> torch.Tensor:
    """log(mean over views of softmax(logits)), computed stably in float32."""
    log_probs = torch.stack([F.log_softmax(v.float(), dim=1) for v in view_logits])
    return torch.logsumexp(log_probs, dim=0) - math.log(len(view_logits))


def combine(member_log_probs: list[torch.Tensor], weights, how: str) -> torch.Tensor:
    """Scores whose order ranks the classes (log-probabilities for softmax and logits)."""
    stacked = torch.stack(member_log_probs)  # members x batch x classes
    w = torch.as_tensor(weights, dtype=stacked.dtype, device=stacked.device).view(-1, 1, 1)
    if how == "softmax":
        return torch.logsumexp(stacked + w.log(), dim=0)
    if how == "logits":
        return F.log_softmax((stacked * w).sum(dim=0), dim=1)
    if how == "vote":
        return vote_ranks(stacked, w)
    raise OrchError(f"--combine {how}: must be one of {', '.join(COMBINES)}")


def vote_ranks(stacked: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per image, C for the winning class down to 1 for the last: votes, then mean softmax, then label."""
    members, batch, classes = stacked.shape
    votes = torch.zeros(batch, classes, dtype=torch.float64, device=stacked.device)
    for m in range(members):
        votes.scatter_add_(1, stacked[m].argmax(dim=1, keepdim=True), w[m].to(torch.float64).expand(batch, 1))
    mean_prob = (stacked.exp() * w).sum(dim=0)
    # Two stable sorts make a lexicographic order: by probability, then (stably) by votes.
    by_prob = mean_prob.argsort(dim=1, descending=True, stable=True)
    by_votes = votes.gather(1, by_prob).argsort(dim=1, descending=True, stable=True)
    order = by_prob.gather(1, by_votes)
    ranks = torch.empty(batch, classes, device=stacked.device)
    descending = torch.arange(classes, 0, -1, dtype=ranks.dtype, device=ranks.device)
    ranks.scatter_(1, order, descending.expand(batch, classes))
    return ranks


class Tally:
    """Exact counts for each member and, with several members, the combination.

    Rows: members, then the ensemble; columns: [correct@1, correct@5, n, loss_sum] as
    EvalCounts (orchestrator.train.metrics) keeps them. They accumulate in float64 on the
    scores' device, so a GPU worker never waits for the host between batches.
    """

    def __init__(self, members: int, weights: list[float], how: str, device="cpu"):
        self.weights = torch.tensor(weights, dtype=torch.float32, device=device)  # copied to the device once
        self.how = how
        self.ensemble = members > 1
        self.counts = torch.zeros(members + self.ensemble, 4, dtype=torch.float64, device=device)

    def update(self, member_log_probs: list[torch.Tensor], labels: torch.Tensor) -> None:
        rows = [batch_counts(log_probs, labels) for log_probs in member_log_probs]
        if self.ensemble:
            scores = combine(member_log_probs, self.weights, self.how)
            rows.append(batch_counts(scores, labels, with_loss=self.how != "vote"))
        self.counts += torch.stack(rows)

    def as_tensor(self) -> torch.Tensor:
        return self.counts.cpu()


def batch_counts(scores: torch.Tensor, labels: torch.Tensor, with_loss: bool = True) -> torch.Tensor:
    """[correct@1, correct@5, n, loss_sum] of one batch as a float64 tensor on the scores' device:
    topk_hits' counts (orchestrator.train.metrics), without reading them back to the host."""
    hits = scores.topk(min(5, scores.shape[1]), dim=1).indices.eq(labels.view(-1, 1))
    n = torch.full((), labels.numel(), dtype=torch.float64, device=scores.device)
    if with_loss:
        loss = F.nll_loss(scores.float(), labels, reduction="sum").double()
    else:
        loss = torch.zeros((), dtype=torch.float64, device=scores.device)
    return torch.stack([hits[:, 0].sum().double(), hits.any(dim=1).sum().double(), n, loss])


def metrics_from_counts(counts: torch.Tensor, with_loss: bool = True) -> dict:
    """EvalCounts' sums -> {top1_error, top5_error, loss, samples} (percent errors)."""
    m = counts_to_metrics(counts)
    out = {"top1_error": m["val_top1_error"], "top5_error": m["val_top5_error"], "samples": m["val_samples"]}
    if with_loss:
        out["loss"] = m["val_loss"]
    return out
