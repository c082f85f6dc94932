"""The optimizer from the spec: SGD with momentum, the paper's recipe.

Imports with torch alone (the spec type only for annotations), so the training step runs
where pydantic is not installed (bench/gpu.py on a GPU machine).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from orchestrator.spec.schema import OptimizerSpec

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def build_optimizer(model: nn.Module, opt: OptimizerSpec, lr: float) -> torch.optim.Optimizer:
    groups = _param_groups(model, opt.weight_decay, opt.no_decay_norm_bias)
    return torch.optim.SGD(groups, lr=lr, momentum=opt.momentum, nesterov=opt.nesterov)


def _param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool) -> list[dict]:
    if not no_decay_norm_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            # Chosen by module type, not by parameter-name substrings.
            exempt = isinstance(module, _NORM_TYPES) or name == "bias"
            (no_decay if exempt else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
