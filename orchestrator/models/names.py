"""What an architecture's name says, without torch (`orch report` reads run names with it):
resnet{depth} / plain{depth} (ImageNet, Table 1) and cifar_resnet{depth} / cifar_plain{depth}
(CIFAR-10, section 4.2), and the paper's shortcut for each. Which depths exist is the
registry's (orchestrator/models/registry.py) to say.
"""

import re

ARCH_NAME = re.compile(r"(cifar_)?(resnet|plain)([0-9]+)")


def parse_arch(name) -> tuple[str, bool, int] | None:
    """(family "imagenet" | "cifar", residual, depth) that a name spells; None for another name."""
    match = ARCH_NAME.fullmatch(name) if isinstance(name, str) else None
    if not match:
        return None
    return ("cifar" if match[1] else "imagenet"), match[2] == "resnet", int(match[3])


def default_shortcut(family: str, residual: bool) -> str | None:
    """The paper's choice: A on CIFAR, B on ImageNet; None (no shortcuts) for plain nets."""
    if not residual:
        return None
    return "A" if family == "cifar" else "B"
