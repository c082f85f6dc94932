"""Metric reduction: counts summed over real gloo ranks with uneven shards equal the
single-process result exactly; averaging per-rank percentages would not."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from orchestrator.train.metrics import EvalCounts, topk_hits

N, CLASSES = 1001, 10


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[int]:
    """`topk_hits` read back as Python ints."""
    return [int(v) for v in topk_hits(logits, labels, ks).tolist()]


def _data():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(N, CLASSES, generator=gen), torch.randint(0, CLASSES, (N,), generator=gen)


def _shard(rank: int, world: int) -> slice:
    # Deliberately uneven: rank 0 gets a tiny shard.
    bounds = [0, 7, N] if world == 2 else [0, N]
    return slice(bounds[rank], bounds[rank + 1])


def _worker(rank, world, port, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    logits, labels = _data()
    part = _shard(rank, world)
    counts = EvalCounts()
    loss = torch.nn.functional.cross_entropy(logits[part], labels[part], reduction="sum").item()
    counts.update(logits[part], labels[part], loss)
    queue.put((rank, counts.reduce()))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process() -> dict:
    logits, labels = _data()
    counts = EvalCounts()
    counts.update(logits, labels, torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item())
    return counts.reduce()


def test_topk_correct():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    assert topk_correct(logits, labels, ks=(1, 2)) == [1, 1]
    assert topk_correct(logits, labels, ks=(1, 5)) == [1, 3]  # k capped at the class count


def test_counts_accumulate_as_tensors_batch_by_batch():
    logits, labels = _data()
    counts = EvalCounts()
    for part in (slice(0, 7), slice(7, 500), slice(500, N)):
        loss_sum = torch.nn.functional.cross_entropy(logits[part], labels[part], reduction="sum")
        counts.update(logits[part].bfloat16(), labels[part], loss_sum)  # a 0-dim tensor, never read per batch
    assert counts.counts.dtype == torch.float64
    got, rounded = counts.reduce(), logits.bfloat16().float()
    top1, top5 = topk_correct(rounded, labels)
    assert got["val_samples"] == N
    assert got["val_top1_error"] == 100.0 * (1 - top1 / N) and got["val_top5_error"] == 100.0 * (1 - top5 / N)
    assert got["val_loss"] == pytest.approx(_single_process()["val_loss"], rel=1e-6)
    hits = topk_hits(rounded, labels)
    assert hits.dtype == torch.int64 and hits.tolist() == [top1, top5]


def test_uneven_shards_reduce_to_the_exact_result():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    expected = _single_process()
    assert results[0] == results[1]
    assert results[0]["val_samples"] == N
    assert results[0]["val_top1_error"] == expected["val_top1_error"]
    assert results[0]["val_top5_error"] == expected["val_top5_error"]
    assert results[0]["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-6)  # float32 sums
    # What averaging the ranks' percentages would give differs: counts are needed.
    logits, labels = _data()
    per_rank = [
        100 * (1 - topk_correct(logits[_shard(r, 2)], labels[_shard(r, 2)])[0] / len(labels[_shard(r, 2)]))
        for r in range(2)
    ]
    assert abs(sum(per_rank) / 2 - expected["val_top1_error"]) > 0.5
