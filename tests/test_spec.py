"""The job spec: validation names the key path, overrides are YAML-typed, paths made absolute."""

import os
from pathlib import Path

import pytest

from orchestrator.errors import SpecError
from orchestrator.spec import flatten, load_spec

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
