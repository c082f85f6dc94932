"""Reading a job spec: YAML file (over its `base:` files) plus `--set key.path=value` overrides,
validated as one object."""

import copy
import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from orchestrator.errors import SpecError
from orchestrator.spec.schema import PATH_FIELDS, JobSpec


def load_spec(path, overrides=()) -> JobSpec:
    """Read, override and validate a spec file. Raises SpecError naming the file or key."""
    raw = read_layered(path)
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(raw, key, value)
    return spec_from_dict(raw, source=str(path))


def read_layered(path) -> dict:
    """The file's mapping merged over its `base:` chain (each PATH relative to the file naming it),
    `base` removed. Raises SpecError naming the file for a missing, invalid or cyclic base."""
    return _read_layered(Path(path), ())


def merge(base: dict, override: dict) -> dict:
    """`override` over `base`, neither changed: mappings merge key by key, lists and values replace."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        old = merged.get(key)
        merged[key] = merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else copy.deepcopy(value)
    return merged


def spec_from_dict(raw: dict, source: str = "spec") -> JobSpec:
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(f"{source}: {describe_validation_error(exc)}") from None
    return _absolute_paths(spec)


def parse_override(item: str) -> tuple[str, object]:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise SpecError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. --set training.epochs=2")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def set_dotted(tree: dict, key: str, value) -> None:
    node = tree
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            prefix = ".".join(parts[: i + 1])
            raise SpecError(f"--set {key}: {prefix} is a value, not a section")
        node = child
    node[parts[-1]] = value


def describe_validation_error(exc: ValidationError) -> str:
    """The first problem, as `key.path: message`, which is what a user needs to fix it."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown key (check its spelling; see jobs/ for examples)"
    if err["type"] == "missing":
        return f"{where}: required key is missing"
    message = err["msg"].removeprefix("Value error, ")
    return f"{where}: {message} (got {err.get('input')!r})"


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}: the form MLflow params take."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise SpecError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping of sections (name, model, data, ...)")
    return raw


def _read_layered(path: Path, seen: tuple[Path, ...]) -> dict:
    raw = _read_yaml(path)
    if "base" not in raw:
        return raw
    value = raw.pop("base")
    return merge(_read_layered(_base_path(path, value, seen), (*seen, path)), raw)


def _base_path(path: Path, value, seen: tuple[Path, ...]) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise SpecError(f"{path}: base: expected the path of a YAML file, relative to this one (got {value!r})")
    base = path.parent / os.path.expanduser(value)
    if not base.is_file():
        raise SpecError(f"{path}: base: {base} not found (PATH is relative to {path})")
    chain = (*seen, path, base)
    if any(base.resolve() == other.resolve() for other in chain[:-1]):
        raise SpecError(f"{path}: base: {value} makes a cycle ({' -> '.join(map(str, chain))})")
    return base


def _absolute_paths(spec: JobSpec) -> JobSpec:
    for section, field in PATH_FIELDS:
        obj = getattr(spec, section)
        value = getattr(obj, field)
        if "://" not in value:
            setattr(obj, field, os.path.abspath(os.path.expanduser(value)))
    return spec
