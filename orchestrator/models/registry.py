"""Architecture names, their options, and `build_model`, the one way a model gets built.

Names: resnet{18,34,50,101,152} and their plain twins plain{...} (ImageNet, Table 1), and
cifar_resnet{6n+2} / cifar_plain{6n+2} for any n >= 1 (CIFAR-10, section 4.2).
"""

import difflib
from dataclasses import dataclass

import torch.nn as nn

from orchestrator.errors import SpecError
from orchestrator.models.blocks import SHORTCUTS, STRIDE_IN, BasicBlock, Bottleneck
from orchestrator.models.cifar import CifarResNet
from orchestrator.models.names import default_shortcut, parse_arch
from orchestrator.models.resnet import ResNet

IMAGENET_LAYERS: dict[int, tuple[type[nn.Module], list[int]]] = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}
PAPER_CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
INPUT_SIZES = {"imagenet": 224, "cifar": 32}


@dataclass(frozen=True)
class ArchInfo:
    name: str
    family: str  # "imagenet" or "cifar"
    residual: bool
    depth: int
    block: type[nn.Module]

    @property
    def bottleneck(self) -> bool:
        return self.block is Bottleneck

    @property
    def default_shortcut(self) -> str | None:
        """The paper's choice (orchestrator/models/names.py); None for plain nets."""
        return default_shortcut(self.family, self.residual)


def list_archs() -> list[str]:
    """The ImageNet names, then the paper's CIFAR depths of both CIFAR families."""
    imagenet = [f"{kind}{depth}" for kind in ("resnet", "plain") for depth in IMAGENET_LAYERS]
    cifar = [f"cifar_{kind}{depth}" for kind in ("resnet", "plain") for depth in PAPER_CIFAR_DEPTHS]
    return imagenet + cifar


def arch_info(arch: str) -> ArchInfo:
    """What a name stands for; SpecError for an unknown name or a CIFAR depth that is not 6n+2."""
    name = arch if isinstance(arch, str) else ""
    family, residual, depth = parse_arch(name) or (None, None, None)
    if family == "imagenet" and depth in IMAGENET_LAYERS:
        return ArchInfo(name, family, residual, depth, IMAGENET_LAYERS[depth][0])
    if family == "cifar":
        if depth < 8 or (depth - 2) % 6:
            raise SpecError(
                f"{name}: a CIFAR net's depth must be 6n+2 with n >= 1 (cifar_{'resnet' if residual else 'plain'}"
                f"{{6n+2}}: 8, 14, 20, 32, 44, 56, 110, 1202, ...), got {depth}"
            )
        return ArchInfo(name, family, residual, depth, BasicBlock)
    raise SpecError(f"unknown arch {arch!r}{_did_you_mean(name)}; known: {_known_names()}")


def default_input_size(arch: str) -> int:
    """The side the net was designed for: 224 (ImageNet) or 32 (CIFAR)."""
    return INPUT_SIZES[arch_info(arch).family]


def build_model(arch: str, num_classes: int, **options) -> nn.Module:
    """Build `arch` with freshly initialized weights.

    Options (SpecError for an unknown one or a bad value):
      shortcut            "A" | "B" | "C"; default the paper's (models/names.py); residual nets only
      stride_in           "v1" | "v1.5" (default): where a bottleneck strides; no effect on basic blocks
      zero_init_residual  bool, default False: zero the last BatchNorm of each residual branch
      in_channels         int, default 3
    """
    info = arch_info(arch)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise SpecError(f"{info.name}: num_classes must be a positive integer, got {num_classes!r}")
    opts = _resolve_options(info, options)
    common = dict(
        num_classes=num_classes,
        in_channels=opts["in_channels"],
        zero_init_residual=opts.get("zero_init_residual", False),
        shortcut=opts.get("shortcut"),
    )
    if info.family == "cifar":
        return CifarResNet((info.depth - 2) // 6, **common)
    block, layers = IMAGENET_LAYERS[info.depth]
    block_options = {"stride_in": opts["stride_in"]} if block is Bottleneck else {}
    return ResNet(block, layers, **common, **block_options)


def _resolve_options(info: ArchInfo, options: dict) -> dict:
    """The options with their defaults filled in, checked against what `info` accepts."""
    defaults = {"in_channels": 3, "stride_in": "v1.5"}
    if info.residual:
        defaults.update(shortcut=info.default_shortcut, zero_init_residual=False)
    for key in options:
        if key not in defaults:
            why = " (plain nets have no shortcuts)" if key in ("shortcut", "zero_init_residual") else ""
            raise SpecError(f"{info.name}: unknown option {key!r}{why}; options: {', '.join(sorted(defaults))}")
    opts = defaults | options
    if "shortcut" in opts:
        _check_choice(info, "shortcut", opts["shortcut"], SHORTCUTS)
    _check_choice(info, "stride_in", opts["stride_in"], STRIDE_IN)
    if not isinstance(opts.get("zero_init_residual", False), bool):
        raise SpecError(
            f"{info.name}: option zero_init_residual must be true or false, got {opts['zero_init_residual']!r}"
        )
    channels = opts["in_channels"]
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise SpecError(f"{info.name}: option in_channels must be a positive integer, got {channels!r}")
    return opts


def _check_choice(info: ArchInfo, key: str, value, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise SpecError(f"{info.name}: option {key} must be one of {', '.join(allowed)}, got {value!r}")


def _known_names() -> str:
    imagenet = [name for name in list_archs() if not name.startswith("cifar_")]
    return ", ".join(imagenet + ["cifar_resnet{6n+2}", "cifar_plain{6n+2}"])


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, list_archs(), n=1)
    return f" (did you mean {close[0]}?)" if close else ""
