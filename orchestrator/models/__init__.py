"""The ResNet paper's networks (He et al., 2015): build one by name with `build_model`.

Importing this package imports nothing but itself: each name loads its module when first used,
so that orchestrator.models.names (what a name says) serves `orch report` without torch.
"""

from importlib import import_module

_HOMES = {
    "ArchInfo": "registry",
    "arch_info": "registry",
    "build_model": "registry",
    "default_input_size": "registry",
    "list_archs": "registry",
    "count_macs": "complexity",
    "count_parameters": "complexity",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'orchestrator.models' has no attribute {name!r}")
    return getattr(import_module(f"orchestrator.models.{_HOMES[name]}"), name)
