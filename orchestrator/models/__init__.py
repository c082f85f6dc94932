"""The ResNet paper's networks (He et al., 2015): build one by name with `build_model`.
May import: nothing but the leaves.

The names below are imported when first used: the registry and the complexity counts import
torch, which orchestrator.models.names (what an architecture's name says) spares `orch report`.
"""

_REGISTRY = ("ArchInfo", "arch_info", "build_model", "default_input_size", "list_archs")
_COMPLEXITY = ("count_macs", "count_parameters")
__all__ = sorted(_REGISTRY + _COMPLEXITY)


def __getattr__(name: str):
    if name in _REGISTRY:
        from orchestrator.models import registry

        return getattr(registry, name)
    if name in _COMPLEXITY:
        from orchestrator.models import complexity

        return getattr(complexity, name)
    raise AttributeError(f"module 'orchestrator.models' has no attribute {name!r}")
