"""Distributed helpers in one place. Each is a no-op without a process group, so the same
loop runs in a single process in tests."""

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place and return it (unchanged without a process group)."""
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise maximum over ranks, in place (unchanged without a process group)."""
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def cpu_group():
    """A process group for small host-side collectives: the default group when it is gloo (CPU
    training), else a gloo group beside NCCL, so that agreeing on a flag never waits for the
    GPU's queued work. Every rank must call it, at the same point."""
    if not is_initialized():
        return None
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    return dist.new_group(backend="gloo")


def max_int_over_ranks(value: int, group=None) -> int:
    """The largest of the ranks' integers (a collective on `group`; the value itself without one)."""
    if not is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=group)
    return int(tensor.item())
