"""Exact classification metrics: counts summed over ranks, then divided once.

Averaging per-rank percentages is wrong when shards differ in size; summing
[correct@1, correct@5, n, loss_sum] and dividing at the end is exact for any sharding.
"""

import torch

from orchestrator.train.distributed import all_reduce_sum


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[int]:
    """How many samples have their label among the top-k scores, for each k."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices
    hits = top.eq(labels.view(-1, 1))
    return [int(hits[:, : min(k, maxk)].any(dim=1).sum()) for k in ks]


class EvalCounts:
    """Accumulates counts on one rank; `reduce()` sums them over all ranks."""

    def __init__(self):
        self.counts = torch.zeros(4, dtype=torch.float64)  # top1, top5, n, loss_sum

    def update(self, logits: torch.Tensor, labels: torch.Tensor, loss_sum: float) -> None:
        top1, top5 = topk_correct(logits.detach(), labels)
        self.counts += torch.tensor([top1, top5, labels.numel(), loss_sum], dtype=torch.float64)

    def reduce(self, device=None) -> dict:
        """Sum over ranks (a collective: every rank must call it) and return the metrics."""
        total = all_reduce_sum(self.counts.to(device or "cpu")).cpu()
        return counts_to_metrics(total)


def counts_to_metrics(total: torch.Tensor) -> dict:
    top1, top5, n, loss_sum = total.tolist()
    if n == 0:
        raise ValueError("no validation samples were evaluated")
    return {
        "val_loss": loss_sum / n,
        "val_top1_error": 100.0 * (1 - top1 / n),
        "val_top5_error": 100.0 * (1 - top5 / n),
        "val_samples": int(n),
    }
