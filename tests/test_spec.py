"""The job spec: validation names the key path, overrides are YAML-typed, paths made absolute,
`base:` files merge under the file that names them."""

import json
import os
from pathlib import Path

import pytest

from orchestrator.errors import SpecError
from orchestrator.spec import flatten, load_spec, merge, read_layered
from orchestrator.train.schedule import scaled_lr

JOBS = Path(__file__).resolve().parent.parent / "jobs"
DEMO = JOBS / "demo_fashion_mnist.yaml"


def test_demo_spec_loads_with_defaults():
    spec = load_spec(DEMO)
    assert spec.model.arch == "cifar_resnet20"
    assert spec.optimizer.momentum == 0.9 and spec.optimizer.weight_decay == 5e-4
    assert spec.scaling.use_gpu is False
    assert os.path.isabs(spec.data.train) and os.path.isabs(spec.checkpoint.storage)


def test_required_keys_exist_under_their_names():
    flat = flatten(load_spec(DEMO).model_dump(mode="json"))
    for key in (
        "model.arch",
        "data.train",
        "data.val",
        "training.epochs",
        "training.seed",
        "optimizer.lr",
        "scaling.num_workers",
        "scaling.use_gpu",
    ):
        assert key in flat


def test_overrides_are_yaml_typed():
    spec = load_spec(
        DEMO,
        [
            "training.epochs=7",
            "scaling.use_gpu=true",
            "schedule.milestones=[1, 2]",
            "model.options.shortcut=B",
            "tracking.run_name=x",
        ],
    )
    assert spec.training.epochs == 7 and spec.scaling.use_gpu is True
    assert spec.schedule.milestones == [1, 2]
    assert spec.model.options == {"shortcut": "B"}
    assert spec.tracking.run_name == "x"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("training.epochz=3", "training.epochz: unknown key"),
        ("training.epochs=many", "training.epochs:"),
        ("training.epochs=0", "training.epochs:"),
        ("optimizer.lr=-1", "optimizer.lr:"),
        ("scaling.placement=ANYWHERE", "scaling.placement:"),
        ("schedule.milestones=[5, 2]", "milestones must be increasing"),
        ("training", "expected KEY.PATH=VALUE"),
        ("training.epochs.x=1", "training.epochs is a value"),
    ],
)
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(SpecError) as err:
        load_spec(DEMO, [override])
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nmodel: [unclosed\n")
    with pytest.raises(SpecError, match=r"broken.yaml:\d+: not valid YAML"):
        load_spec(broken)
    missing = tmp_path / "missing.yaml"
    missing.write_text("name: x\nmodel: {arch: resnet18}\ntraining: {epochs: 1, batch_size: 2}\n")
    with pytest.raises(SpecError, match="data: required key is missing"):
        load_spec(missing)


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


JOB_REST = "data: {train: t.beton, val: v.beton}\ntraining: {epochs: 3, batch_size: 8}\n"


def test_merge_nests_mappings_and_replaces_lists_and_values():
    base = {"a": {"b": 1, "c": {"d": 2, "e": 3}}, "l": [1, 2, 3], "s": "x", "m": {"k": 1}}
    override = {"a": {"c": {"e": 30}, "f": 4}, "l": [9], "s": "y", "m": 5, "n": {"new": 1}}
    merged = merge(base, override)
    assert merged == {"a": {"b": 1, "c": {"d": 2, "e": 30}, "f": 4}, "l": [9], "s": "y", "m": 5, "n": {"new": 1}}
    assert merge({"a": 1, "o": {"x": 1}}, {"a": {"b": 2}, "o": {}}) == {"a": {"b": 2}, "o": {"x": 1}}


def test_merge_changes_neither_input():
    base = {"a": {"b": [1]}, "c": {"d": 1}}
    override = {"a": {"e": {"f": 1}}, "g": [2]}
    before = json.dumps([base, override])
    merged = merge(base, override)
    merged["a"]["b"].append(2)
    merged["a"]["e"]["f"] = 9
    merged["g"].append(3)
    merged["c"]["d"] = 9
    assert json.dumps([base, override]) == before


def test_bases_chain_each_relative_to_its_own_file(tmp_path):
    write(tmp_path / "common" / "root.yaml", "experiment: e\n" + JOB_REST + "schedule: {milestones: [1, 2]}\n")
    write(tmp_path / "common" / "mid" / "recipe.yaml", "base: ../root.yaml\nmodel: {arch: resnet18, options: {a: 1}}\n")
    job = write(
        tmp_path / "jobs" / "job.yaml",
        "base: ../common/mid/recipe.yaml\nname: j\nmodel: {options: {b: 2}}\ntraining: {epochs: 5}\n",
    )
    raw = read_layered(job)
    assert "base" not in raw
    assert raw["model"] == {"arch": "resnet18", "options": {"a": 1, "b": 2}}
    assert raw["training"] == {"epochs": 5, "batch_size": 8}
    spec = load_spec(job)
    assert spec.experiment == "e" and spec.schedule.milestones == [1, 2] and spec.training.epochs == 5
    assert "base" not in spec.model_dump()


def test_set_applies_after_the_bases(tmp_path):
    write(tmp_path / "base.yaml", "model: {arch: resnet18}\n" + JOB_REST)
    job = write(tmp_path / "job.yaml", "base: base.yaml\nname: j\ntraining: {epochs: 5}\n")
    spec = load_spec(job, ["training.epochs=7", "model.arch=resnet34", "schedule.milestones=[4]"])
    assert spec.training.epochs == 7 and spec.model.arch == "resnet34" and spec.schedule.milestones == [4]
    assert spec.training.batch_size == 8


@pytest.mark.parametrize("value", ["3", "[a.yaml]", "{path: a.yaml}", "null", "''"])
def test_base_must_be_a_path(tmp_path, value):
    job = write(tmp_path / "job.yaml", f"base: {value}\nname: j\n")
    with pytest.raises(SpecError) as err:
        load_spec(job)
    assert str(err.value).startswith(f"{job}: base: expected the path of a YAML file")
    assert "\n" not in str(err.value)


def test_missing_base_names_the_file_and_where_it_looked(tmp_path):
    job = write(tmp_path / "jobs" / "x.yaml", "base: missing.yaml\nname: j\n")
    with pytest.raises(SpecError) as err:
        read_layered(job)
    assert str(err.value) == f"{job}: base: {tmp_path / 'jobs' / 'missing.yaml'} not found (PATH is relative to {job})"
    write(tmp_path / "jobs" / "folder" / "f.yaml", "name: j\n")
    write(job, "base: folder\n")
    with pytest.raises(SpecError, match="base: .*folder not found"):
        read_layered(job)


def test_an_invalid_base_is_named_with_its_line(tmp_path):
    write(tmp_path / "broken.yaml", "name: x\nmodel: [unclosed\n")
    write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(SpecError, match=r"broken.yaml:\d+: not valid YAML"):
        read_layered(write(tmp_path / "a.yaml", "base: broken.yaml\n"))
    with pytest.raises(SpecError, match=r"list.yaml: expected a mapping"):
        read_layered(write(tmp_path / "b.yaml", "base: list.yaml\n"))


def test_base_cycles_are_errors(tmp_path):
    write(tmp_path / "a.yaml", "base: sub/b.yaml\nname: a\n")
    write(tmp_path / "sub" / "b.yaml", "base: ../a.yaml\n")
    with pytest.raises(SpecError) as err:
        read_layered(tmp_path / "a.yaml")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'sub' / 'b.yaml'}: base: ../a.yaml makes a cycle (")
    assert message.count(" -> ") == 2 and "\n" not in message
    with pytest.raises(SpecError, match="self.yaml: base: self.yaml makes a cycle"):
        read_layered(write(tmp_path / "self.yaml", "base: self.yaml\n"))


def test_a_chain_of_three_is_not_a_cycle(tmp_path):
    write(tmp_path / "root.yaml", "model: {arch: resnet18}\n" + JOB_REST)
    write(tmp_path / "left.yaml", "base: root.yaml\nname: left\n")
    job = write(tmp_path / "job.yaml", "base: left.yaml\nname: j\n")
    assert load_spec(job).name == "j"


# name: (experiment, arch, options, epochs, milestones, batch_size, lr, warmup, placement); warmup as
# (kind, epochs, steps, factor) or None
PAPER = ("resnet-paper-imagenet", 120, [30, 60, 90], 32, 0.1, None, "PACK")
CIFAR = ("resnet-paper-cifar10", 164, [82, 123], 128, 0.2, None, "PACK")
GOYAL = ("resnet-imagenet-large-batch", 120, [30, 60, 90], 256, 0.1, ("linear", 5, None, 0.1), "PACK")
RESOLVED = {
    "plain18_imagenet": ("plain18-imagenet", "plain18", {}, PAPER),
    "plain34_imagenet": ("plain34-imagenet", "plain34", {}, PAPER),
    "resnet18_imagenet": ("resnet18-imagenet", "resnet18", {"shortcut": "A"}, PAPER),
    "resnet34_imagenet": ("resnet34-imagenet", "resnet34", {"shortcut": "A"}, PAPER),
    "resnet50_imagenet": ("resnet50-imagenet", "resnet50", {"shortcut": "B", "stride_in": "v1"}, PAPER),
    "resnet101_imagenet": ("resnet101-imagenet", "resnet101", {"shortcut": "B", "stride_in": "v1"}, PAPER),
    "resnet152_imagenet": (
        "resnet152-imagenet",
        "resnet152",
        {"shortcut": "B", "stride_in": "v1"},
        PAPER,  # packed: its 8 workers' all_reduce stays within a node's NVLink where they fit
    ),
    "resnet50_imagenet_large_batch": (
        "resnet50-imagenet-large-batch",
        "resnet50",
        {"shortcut": "B", "stride_in": "v1"},
        GOYAL,
    ),
    "resnet50_imagenet_fast": (
        "resnet50-imagenet-fast",
        "resnet50",
        {"shortcut": "B", "stride_in": "v1.5"},
        ("resnet-imagenet-fast", 88, [30, 60, 90], 256, 0.425, ("linear", 2, None, 0.1), "PACK"),
    ),
    "cifar_plain20": ("cifar_plain20", "cifar_plain20", {}, CIFAR),
    "cifar_plain56": ("cifar_plain56", "cifar_plain56", {}, CIFAR),
    "cifar_resnet20": ("cifar_resnet20", "cifar_resnet20", {}, CIFAR),
    "cifar_resnet56": ("cifar_resnet56", "cifar_resnet56", {}, CIFAR),
    "cifar_resnet110": ("cifar_resnet110", "cifar_resnet110", {}, CIFAR[:-2] + (("constant", None, 400, 0.1), "PACK")),
    "demo_fashion_mnist": (
        "demo-fashion-mnist",
        "cifar_resnet20",
        {"shortcut": "A"},
        ("orch-demo", 3, [30, 60, 90], 128, 0.4, ("linear", 0.3, None, 0.1), "PACK"),
    ),
}


def test_every_job_is_listed():
    assert sorted(p.stem for p in JOBS.glob("*.yaml")) == sorted(RESOLVED)


def _warmup(spec) -> tuple | None:
    w = spec.schedule.warmup
    return None if w is None else (w.kind, w.epochs, w.steps, w.factor)


@pytest.mark.parametrize("stem", sorted(RESOLVED))
def test_jobs_resolve_to_their_recipes(stem):
    name, arch, options, (experiment, epochs, milestones, batch, lr, warmup, placement) = RESOLVED[stem]
    spec = load_spec(JOBS / f"{stem}.yaml")
    assert (spec.name, spec.experiment, spec.model.arch, spec.model.options) == (name, experiment, arch, options)
    assert (spec.training.epochs, spec.schedule.milestones, spec.training.batch_size) == (epochs, milestones, batch)
    assert (spec.optimizer.lr, _warmup(spec), spec.scaling.placement) == (lr, warmup, placement)
    if experiment.startswith("resnet-paper-"):
        imagenet = experiment.endswith("imagenet")
        assert spec.data.augment == ("paper" if imagenet else "cifar")
        assert spec.model.num_classes == (1000 if imagenet else 10)
        assert spec.schedule.kind == "step" and spec.optimizer.weight_decay == 1e-4
        assert spec.checkpoint.num_to_keep == (3 if imagenet else 2)
        assert spec.scaling.num_workers == (8 if imagenet else 1) and spec.scaling.use_gpu
        # The paper's global batch and learning rate: 256 at 0.1 on ImageNet, 128 at 0.1 on CIFAR-10.
        global_batch = spec.training.batch_size * spec.scaling.num_workers
        assert (global_batch, scaled_lr(spec.optimizer.lr, global_batch)) == ((256, 0.1) if imagenet else (128, 0.1))


def test_the_fast_recipe_replaces_the_papers():
    spec = load_spec(JOBS / "resnet50_imagenet_fast.yaml")
    assert spec.schedule.kind == "cosine" and spec.data.augment == "imagenet" and spec.data.num_workers == 12
    assert spec.data.resolution.model_dump() == {
        "min_res": 160,
        "max_res": 192,
        "start_epoch": 65,
        "end_epoch": 76,
        "val_res": 256,
    }
    assert spec.optimizer.label_smoothing == 0.1 and spec.optimizer.no_decay_norm_bias
    assert spec.scaling.cpus_per_worker == 12 and spec.training.max_failures == 3


@pytest.mark.parametrize(
    "job, shown",
    [
        ("cifar_resnet110", ["global_batch: 128", "lr 0.01 for the first 400 steps (constant warm-up), then lr 0.1"]),
        ("resnet50_imagenet", ["global_batch: 256", "effective_lr: 0.1", "lr_schedule: lr 0.1, x0.1 at epochs 30"]),
        ("resnet50_imagenet_large_batch", ["global_batch: 2048", "rising linearly from lr 0.08 to lr 0.8"]),
    ],
)
def test_dry_run_shows_the_recipes_batch_and_learning_rate(job, shown, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from orchestrator.cli.main import cli

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["submit", str(JOBS / f"{job}.yaml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    for text in shown:
        assert text in result.stdout


def test_the_older_warmup_keys_still_read(tmp_path):
    job = JOBS / "demo_fashion_mnist.yaml"
    assert _warmup(load_spec(job, ["schedule.warmup_epochs=2"])) == ("linear", 2, None, 0.1)
    assert load_spec(job, ["schedule.warmup_epochs=0"]).schedule.warmup is None
    with pytest.raises(SpecError, match="schedule.warmup: give the warm-up's length as epochs or as steps"):
        load_spec(job, ["schedule.warmup={kind: constant, factor: 0.1}"])


def test_dry_run_prints_the_resolved_spec(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from orchestrator.cli.main import cli

    monkeypatch.chdir(tmp_path)
    job = JOBS / "resnet34_imagenet.yaml"
    result = CliRunner().invoke(cli, ["submit", str(job), "--dry-run", "--output", "json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)["spec"]
    assert "base" not in printed
    assert printed == load_spec(job).model_dump(mode="json")
    assert printed["model"]["arch"] == "resnet34" and printed["schedule"]["milestones"] == [30, 60, 90]
    assert printed["data"]["train"] == str(tmp_path / "data" / "imagenet" / "train.beton")


def test_spreading_gpu_workers_is_said_to_cost_the_all_reduce(capsys):
    from orchestrator.cli.main import main

    main(["submit", str(JOBS / "resnet152_imagenet.yaml"), "--dry-run", "--set", "scaling.placement=SPREAD"])
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("orch: warning:")]
    assert "scaling.placement: SPREAD puts the 8 GPU workers" in line and "PACK, the default" in line
    main(["submit", str(JOBS / "resnet152_imagenet.yaml"), "--dry-run"])
    assert "orch: warning" not in capsys.readouterr().err
