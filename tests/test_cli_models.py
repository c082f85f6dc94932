"""`orch models`: the architectures with exact parameter counts and multiply-adds."""

import json

import pytest
from click.testing import CliRunner

from orchestrator.cli import models as cli_models
from orchestrator.cli.models import models
from orchestrator.errors import SpecError
from orchestrator.models import list_archs


def invoke(*args: str):
    result = CliRunner().invoke(models, list(args))
    return result


def test_json_lists_the_architectures_with_their_family_defaults(monkeypatch):
    # The full list takes ~10 s to build and count; its counts are tested in test_models.py.
    archs = ["resnet18", "resnet50", "plain34", "cifar_resnet20", "cifar_resnet110"]
    monkeypatch.setattr(cli_models, "list_archs", lambda: archs)
    result = invoke("--output", "json")
    assert result.exit_code == 0, result.output
    rows = {row["arch"]: row for row in json.loads(result.output)["models"]}
    assert list(rows) == archs
    assert rows["resnet50"] == {
        "arch": "resnet50",
        "family": "imagenet",
        "block": "bottleneck",
        "shortcut": "B",
        "input_size": 224,
        "num_classes": 1000,
        "params": 25_557_032,
        "macs": 4_089_184_256,
        "macs_v1": 3_857_973_248,
    }
    assert rows["cifar_resnet110"]["params"] == 1_727_962
    assert rows["cifar_resnet20"]["shortcut"] == "A" and rows["plain34"]["shortcut"] is None
    for row in rows.values():
        assert ("macs_v1" in row) == (row["block"] == "bottleneck")
        cifar = row["family"] == "cifar"
        assert (row["input_size"], row["num_classes"]) == ((32, 10) if cifar else (224, 1000))


def test_lists_the_papers_architectures_by_default(monkeypatch):
    built = []
    monkeypatch.setattr(cli_models, "_describe", lambda arch, *_: built.append(arch) or {"arch": arch})
    assert invoke("-o", "json").exit_code == 0
    assert built == list_archs()


def test_table():
    result = invoke("resnet18", "resnet50", "plain50", "cifar_resnet20")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == [
        "arch",
        "family",
        "block",
        "shortcut",
        "input",
        "classes",
        "params",
        "GMACs",
        "GMACs",
        "v1",
    ]
    assert lines[1].split() == ["resnet18", "imagenet", "basic", "B", "224", "1000", "11,689,512", "1.814", "-"]
    assert lines[2].split() == [
        "resnet50",
        "imagenet",
        "bottleneck",
        "B",
        "224",
        "1000",
        "25,557,032",
        "4.089",
        "3.858",
    ]
    assert lines[3].split()[:4] == ["plain50", "imagenet", "bottleneck", "-"]
    assert lines[4].split() == ["cifar_resnet20", "cifar", "basic", "A", "32", "10", "269,722", "0.041", "-"]
    assert len({len(line) for line in lines[:5]}) == 1  # columns line up
    assert "stride_in v1" in result.output


def test_input_size_and_num_classes_apply_to_every_family():
    result = invoke("resnet18", "cifar_resnet20", "--input-size", "64", "--num-classes", "7", "-o", "json")
    assert result.exit_code == 0, result.output
    resnet18, cifar20 = json.loads(result.output)["models"]
    assert resnet18["input_size"] == cifar20["input_size"] == 64
    assert resnet18["num_classes"] == cifar20["num_classes"] == 7
    assert resnet18["params"] == 11_689_512 - 993 * 513  # fc: 512 inputs and a bias per class
    assert cifar20["params"] == 269_722 - 3 * 65
    assert cifar20["macs"] == 4 * (40_551_040 - 640) + 7 * 64  # 4x the pixels, a 7-class fc


def test_any_cifar_depth():
    result = invoke("cifar_resnet164", "-o", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["models"][0]["params"] > 1_727_962


def test_unknown_arch_is_a_spec_error():
    result = invoke("resnet19")
    assert isinstance(result.exception, SpecError)
    assert "cifar_resnet{6n+2}" in str(result.exception)


@pytest.mark.parametrize("args", [["--output", "yaml"], ["--input-size", "0"], ["--num-classes", "-1"]])
def test_bad_flags_are_usage_errors(args):
    result = invoke(*args)
    assert result.exit_code == 2


def test_orch_models_prints_one_line_errors(capsys):
    main = pytest.importorskip("orchestrator.cli.main").main
    pytest.importorskip("orchestrator.cli.data")
    with pytest.raises(SystemExit) as exit_:
        main(["models", "cifar_resnet21"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("orch: error: cifar_resnet21: ") and "6n+2" in err and err.count("\n") == 1
