"""Model size and cost: parameters, and multiply-adds of the convs and linear layers."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from orchestrator.models.blocks import Bottleneck

LayerShapes = list[tuple[nn.Module, torch.Size]]
_COUNTED = (nn.modules.conv._ConvNd, nn.Linear)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int, in_channels: int = 3) -> int:
    """Multiply-adds for one input_size x input_size image through the convs and linear layers
    (BatchNorm, activations, pooling and additions are not counted)."""
    return macs_of(layer_output_shapes(model, input_size, in_channels))


def layer_output_shapes(model: nn.Module, input_size: int, in_channels: int = 3) -> LayerShapes:
    """Each conv and linear layer with its output shape for one image, in call order: one
    forward pass with hooks on a zero input, in eval mode, without gradients.

    Build the model on the meta device (`with torch.device("meta")`) and the pass computes
    nothing: cifar_resnet1202 or resnet152 at 224 take a fraction of a second.
    """
    shapes: LayerShapes = []

    def record(module: nn.Module, inputs, output: torch.Tensor) -> None:
        shapes.append((module, output.shape[1:]))

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, _COUNTED)]
    first = next(model.parameters(), None)
    x = torch.zeros(
        1,
        in_channels,
        input_size,
        input_size,
        device=first.device if first is not None else None,
        dtype=first.dtype if first is not None else None,
    )
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), _SkipBatchNorm():
            model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return shapes


class _SkipBatchNorm(TorchFunctionMode):
    """BatchNorm keeps its input's shape; on the meta device its kernel is a Python
    decomposition that would take most of a shape pass (2.5 s of 2.9 s for cifar_resnet1202)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.batch_norm:
            return args[0]
        return func(*args, **(kwargs or {}))


def macs_of(shapes: LayerShapes) -> int:
    """Each layer's output size times its fan-in, summed."""
    total = 0
    for module, shape in shapes:
        if isinstance(module, nn.Linear):
            total += math.prod(shape) * module.in_features
        else:
            total += math.prod(shape) * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    return total


def macs_with_stride_in_v1(model: nn.Module, shapes: LayerShapes) -> int:
    """The MACs of `model` rebuilt with stride_in="v1", from the shapes of a pass over it.

    With v1 a bottleneck's first 1x1 takes the stride, so it runs at the resolution its 3x3
    puts out; no other layer changes. Spares building and running each bottleneck net twice.
    """
    out = dict(shapes)
    for block in model.modules():
        if isinstance(block, Bottleneck):
            out[block.conv1] = out[block.conv1][:1] + out[block.conv2][1:]
    return macs_of(list(out.items()))
