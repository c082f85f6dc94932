"""What a run is: its architecture (depth, plain or residual, shortcut), its dataset, and the
configuration it shares with the other seeds of its group.

Runs are grouped by what their trial set apart from the seed: a sweep trial's
orch.sweep.overrides minus training.seed; for runs without that tag, the params that differ
among the runs, leaving out the seed and what only names or places a run (NOISE_KEYS).

The dataset is the name of the run's training dataset input ("cifar10-train" -> "cifar10",
as orchestrator/runs/run_record.py logs it), else the folder of its data.train file. It counts as
CIFAR-10 (the paper's Table 6) when the name holds "cifar" but not "100" and the run has 10
classes (or did not say), and as ImageNet (Tables 2-4) when it holds "imagenet" or "ilsvrc"
and the run has 1000 classes (or did not say).
"""

import json
from pathlib import Path

from orchestrator.models.names import default_shortcut, parse_arch

SEED_KEY = "training.seed"
# Keys that name a run, say where it ran or what was recorded: never what makes a configuration.
NOISE_KEYS = frozenset(
    {
        "name",
        "experiment",
        SEED_KEY,
        "checkpoint.storage",
        "checkpoint.shared",
        "checkpoint.num_to_keep",
        "checkpoint.every_n_steps",
        "data.num_workers",
        "training.max_failures",
        "scaling.placement",
    }
)
NOISE_PREFIXES = ("tracking.", "cluster.")


def describe_arch(params: dict) -> dict:
    """{arch, family, residual, depth, shortcut, name} of a run's model.arch (and its
    model.options.shortcut, else the paper's default, orchestrator/models/names.py)."""
    arch = params.get("model.arch", "?")
    parsed = parse_arch(arch)
    if not parsed:
        return {"arch": arch, "family": None, "residual": None, "depth": None, "shortcut": None, "name": arch}
    family, residual, depth = parsed
    shortcut = None
    if residual:
        shortcut = params.get("model.options.shortcut") or default_shortcut(family, residual)
    name = f"{'ResNet' if residual else 'plain'}-{depth}"
    return {"arch": arch, "family": family, "residual": residual, "depth": depth, "shortcut": shortcut, "name": name}


def dataset_name(run) -> str:
    """The run's training dataset: its dataset input's name, else its data.train folder."""
    for item in run.inputs.dataset_inputs if run.inputs else ():
        if any(tag.key == "mlflow.data.context" and tag.value == "training" for tag in item.tags):
            return item.dataset.name.removesuffix("-train")
    train = run.data.params.get("data.train")
    return Path(train).parent.name or Path(train).stem if train else "unknown"


def benchmark(dataset: str, params: dict) -> str | None:
    """'cifar10' or 'imagenet' when the run's data is the paper's, else None."""
    name = dataset.lower()
    classes = params.get("model.num_classes")
    classes = int(classes) if classes and classes.isdigit() else None
    if "cifar" in name and "100" not in name and classes in (None, 10):
        return "cifar10"
    if ("imagenet" in name or "ilsvrc" in name) and classes in (None, 1000):
        return "imagenet"
    return None


def group_runs(runs: list) -> list[tuple[dict, list]]:
    """[(configuration, runs)] in the order configurations first appear; the configuration is
    the varied keys and their values, without the seed."""
    groups: dict[str, tuple[dict, list]] = {}
    for run, config in zip(runs, configurations(runs)):
        key = json.dumps(config, sort_keys=True, default=str)
        groups.setdefault(key, (config, []))[1].append(run)
    return list(groups.values())


def configurations(runs: list) -> list[dict]:
    """Each run's configuration: its sweep overrides when every run has them, else the params
    that differ among the runs (NOISE_KEYS left out)."""
    overrides = [run.overrides for run in runs]
    if all(o is not None for o in overrides):
        return [{k: v for k, v in o.items() if k != SEED_KEY} for o in overrides]
    keys = sorted({k for run in runs for k in run.params if not _noise(k)})
    varied = [k for k in keys if len({run.params.get(k) for run in runs}) > 1]
    return [{k: run.params.get(k) for k in varied} for run in runs]


def _noise(key: str) -> bool:
    return key in NOISE_KEYS or key.startswith(NOISE_PREFIXES)


# Keys the label or the dataset column shows already.
_IN_LABEL = ("model.arch", "model.options.shortcut", "data.train", "data.val")


def label(arch: dict, config: dict) -> str:
    """'ResNet-20 (cifar_resnet20; residual, shortcut A; optimizer.lr=0.1)'."""
    kind = "plain" if arch["residual"] is False else "residual" if arch["residual"] else "unknown arch"
    parts = [arch["arch"], kind + (f", shortcut {arch['shortcut']}" if arch["shortcut"] else "")]
    shown = {k: v for k, v in config.items() if k not in _IN_LABEL}
    if shown:
        parts.append(", ".join(f"{k}={v}" for k, v in shown.items()))
    return f"{arch['name']} ({'; '.join(parts)})"
