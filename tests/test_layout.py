"""The shape of the code, read from the source with `ast` (nothing is imported): no import circle
between modules, the leaves and the layers kept, the CLI the only door to the lifecycle, a root
of packages, and every package saying what it holds and what it may import (ARCHITECTURE.md).
Imports inside functions count as much as those at the top of a module."""

import ast
import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "data_pipeline")
# Modules every module may import: each imports nothing of orch's but other leaves.
LEAVES = {
    "orchestrator",
    "orchestrator.errors",
    "orchestrator.tags",
    "orchestrator.ray_internals",
    "orchestrator.startup_trace",
    "orchestrator.targets.naming",
    "orchestrator.recovery.best",
    "orchestrator.models.names",
}
LIFECYCLE, CLI = "orchestrator.runs.lifecycle", "orchestrator.cli"  # the top: they may import anything
MAX_ROOT_MODULES = 5


@functools.cache
def sources() -> dict[str, Path]:
    """{dotted module name: file}; a package is named by its __init__.py."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


@functools.cache
def trees() -> dict[str, ast.Module]:
    return {name: ast.parse(path.read_text(), str(path)) for name, path in sources().items()}


def _lazy_homes(package: str) -> dict[str, str]:
    """A package's `_HOMES = {name: module}` (data_pipeline's names, loaded when first used)."""
    for node in trees()[package].body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_HOMES" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def _ours(name: str) -> str | None:
    """The module of ours that an import of `name` loads (a name inside a module: that module)."""
    while name and name not in sources():
        name = name.rpartition(".")[0]
    return name or None


def _targets(module: str, node) -> list[str]:
    if isinstance(node, ast.Import):
        return [t for alias in node.names if (t := _ours(alias.name))]
    base = node.module or ""
    if node.level:  # relative: from the module's package, up level - 1
        package = module.split(".") if sources()[module].name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
    found = []
    for alias in node.names:
        target = _ours(f"{base}.{alias.name}")
        if target == base and alias.name in _lazy_homes(base):
            target = f"{base}.{_lazy_homes(base)[alias.name]}"
        if target:
            found.append(target)
    return found


@functools.cache
def imports() -> dict[str, set[str]]:
    """{module: the other modules of ours it imports}, at any depth of its code."""
    graph = {}
    for module, tree in trees().items():
        nodes = (n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)))
        graph[module] = {t for node in nodes for t in _targets(module, node)} - {module}
    for package in sources():  # a lazy package loads its homes
        graph[package] |= {f"{package}.{home}" for home in _lazy_homes(package).values()}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the path around it; None when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def _group(module: str) -> str:
    """What a package's docstring names: data_pipeline, or orchestrator's package (or root module)."""
    parts = module.split(".")
    return parts[0] if parts[0] != "orchestrator" else ".".join(parts[1:2]) or "orchestrator"


def _in_cli(module: str) -> bool:
    return module == CLI or module.startswith(CLI + ".")


def _top(module: str) -> bool:
    return _in_cli(module) or module == LIFECYCLE


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_circle_between_modules():
    cycle = _cycle(imports())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_leaves_import_nothing_but_leaves():
    for leaf in LEAVES:
        assert imports()[leaf] <= LEAVES, f"{leaf} imports {sorted(imports()[leaf] - LEAVES)}"


def test_only_the_cli_imports_the_lifecycle_and_nothing_imports_the_cli():
    for module, targets in imports().items():
        if not _in_cli(module):
            assert LIFECYCLE not in targets, f"{module} imports {LIFECYCLE}: only {CLI} may"
            assert not any(t.startswith(CLI) for t in targets), f"{module} imports the CLI"


def test_the_root_holds_packages_and_few_modules():
    modules = sorted(p.name for p in (ROOT / "orchestrator").glob("*.py") if p.name != "__init__.py")
    assert len(modules) <= MAX_ROOT_MODULES, f"orchestrator/ holds {len(modules)} modules: {modules}"


def test_every_package_says_what_it_holds_and_may_import_no_more():
    packages = [name for name, path in sources().items() if path.name == "__init__.py"]
    for package in packages:
        doc = ast.get_docstring(trees()[package]) or ""
        assert doc.strip(), f"{package}/__init__.py has no docstring"
        said = re.search(r"May import:([^\n]*)", doc)
        assert said, f"{package}/__init__.py: its docstring has no 'May import:' line"
        named = re.sub(r"\([^)]*\)", "", said[1])  # "runs (tracking)": the package is what counts
        allowed = set(re.findall(r"[a-z_]+", named)) | {_group(package)}
        inside = [m for m in sources() if _group(m) == _group(package) and not _top(m)]
        used = {(m, _group(t)) for m in inside for t in imports()[m] if t not in LEAVES}
        beyond = sorted(f"{m} -> {group}" for m, group in used if group not in allowed)
        assert not beyond, f"{package} imports what its docstring does not allow: {beyond}"


def test_no_module_reaches_into_another_modules_private_names():
    for module, tree in trees().items():
        bound = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and _targets(module, node):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                assert not private, f"{module} imports {private} from {node.module}"
                bound |= {a.asname or a.name for a in node.names}
            elif isinstance(node, ast.Import) and _targets(module, node):
                bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and getattr(node.value, "id", None) in bound:
                name = node.attr
                assert not (name.startswith("_") and not name.startswith("__")), f"{module}: {node.value.id}.{name}"
