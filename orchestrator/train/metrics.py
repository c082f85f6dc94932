"""Exact classification metrics: counts summed over ranks, then divided once.

Averaging per-rank percentages is wrong when shards differ in size; summing
[correct@1, correct@5, n, loss_sum] and dividing at the end is exact for any sharding.
The counts stay on the logits' device until `reduce()`: no host sync per batch.
"""

import torch

from orchestrator.train.distributed import all_reduce_sum


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> torch.Tensor:
    """How many samples have their label among the top-k scores, for each k: an int64 tensor
    on the logits' device (k is capped at the class count)."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.float().topk(maxk, dim=1).indices
    hits = top.eq(labels.view(-1, 1))
    return torch.stack([hits[:, : min(k, maxk)].any(dim=1).sum() for k in ks])


class EvalCounts:
    """Accumulates [top1, top5, n, loss_sum] on one rank, in float64 on the device of the
    logits it is given (exact for counts below 2**53); `reduce()` sums them over all ranks."""

    def __init__(self):
        self.counts = torch.zeros(4, dtype=torch.float64)  # top1, top5, n, loss_sum
        self._placed = False

    def update(self, logits: torch.Tensor, labels: torch.Tensor, loss_sum) -> None:
        """Add one batch; loss_sum is a float or a 0-dim tensor (left on its device)."""
        counts = self._on(logits.device)
        counts[:2] += topk_hits(logits.detach(), labels)
        counts[2] += labels.numel()  # a shape, known on the host
        counts[3] += loss_sum

    def reduce(self, device=None) -> dict:
        """Sum over ranks (a collective: every rank must call it) and return the metrics."""
        return counts_to_metrics(self.summed(device))

    def summed(self, device=None) -> torch.Tensor:
        """[top1, top5, n, loss_sum] summed over ranks, on the host (a collective; the counts
        themselves go on accumulating unchanged)."""
        return all_reduce_sum(self.counts.to(device or "cpu", copy=True)).cpu()

    def _on(self, device: torch.device) -> torch.Tensor:
        # Fresh zeros on the first batch's device rather than a host-to-device copy.
        if not self._placed:
            self.counts = torch.zeros(4, dtype=torch.float64, device=device)
            self._placed = True
        elif self.counts.device != device:
            self.counts = self.counts.to(device)
        return self.counts


def counts_to_metrics(total: torch.Tensor, split: str = "val") -> dict:
    """{split}_loss, {split}_top1_error, {split}_top5_error (percent) and {split}_samples of
    summed [top1, top5, n, loss_sum] counts."""
    top1, top5, n, loss_sum = total.tolist()
    if n == 0:
        raise ValueError(f"no {split} samples were counted")
    return {
        f"{split}_loss": loss_sum / n,
        f"{split}_top1_error": 100.0 * (1 - top1 / n),
        f"{split}_top5_error": 100.0 * (1 - top5 / n),
        f"{split}_samples": int(n),
    }
