"""The ResNet paper's networks (He et al., 2015): build one by name with `build_model`."""

from orchestrator.models.complexity import count_macs, count_parameters
from orchestrator.models.registry import (
    ArchInfo,
    arch_info,
    build_model,
    default_input_size,
    list_archs,
)

__all__ = [
    "ArchInfo",
    "arch_info",
    "build_model",
    "count_macs",
    "count_parameters",
    "default_input_size",
    "list_archs",
]
