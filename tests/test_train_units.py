"""Pieces of the worker loop that need no Ray: precision, seeding, optimizer groups,
checkpoint files, and how a failure's cause is reported."""

import json

import pytest
import torch

from orchestrator.models import build_model
from orchestrator.spec.schema import OptimizerSpec
from orchestrator.targets.local import root_cause
from orchestrator.train.checkpoint import load_meta, load_model_state, load_train_state, save_checkpoint
from orchestrator.train.loop import resolve_precision, seed_everything
from orchestrator.train.optim import build_optimizer


def test_precision_auto_is_bf16_on_gpu_fp32_on_cpu():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda", 0)) == "bf16"
    assert resolve_precision("fp16", torch.device("cpu")) == "fp16"


def test_seeding_depends_on_seed_epoch_and_rank():
    draws = {}
    for key in [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 0, 0)]:
        seed_everything(*key)
        draws.setdefault(key, []).append(torch.rand(3))
    assert torch.equal(draws[(0, 0, 0)][0], draws[(0, 0, 0)][1])
    firsts = [v[0] for v in draws.values()]
    assert all(not torch.equal(a, b) for i, a in enumerate(firsts) for b in firsts[i + 1 :])


def test_no_decay_groups_by_module_type():
    model = build_model("cifar_resnet8", 10)
    opt = build_optimizer(model, OptimizerSpec(no_decay_norm_bias=True), lr=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    norms = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    assert norms <= {id(p) for p in no_decay["params"]}
    assert id(model.fc.bias) in {id(p) for p in no_decay["params"]}
    assert id(model.fc.weight) in {id(p) for p in decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    default = build_optimizer(model, OptimizerSpec(), lr=0.1)
    assert len(default.param_groups) == 1 and default.param_groups[0]["momentum"] == 0.9


def test_checkpoint_files_are_plain_data(tmp_path):
    model = build_model("cifar_resnet8", 10)
    opt = build_optimizer(model, OptimizerSpec(), lr=0.1)
    state = {"optimizer": opt.state_dict(), "scaler": {}, "epoch": 3, "step": 120, "seed": 0}
    save_checkpoint(tmp_path, model.state_dict(), state, {"arch": "cifar_resnet8", "epoch": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checksums.json", "meta.json", "model.pt", "train_state.pt"]
    restored = build_model("cifar_resnet8", 10)
    restored.load_state_dict(load_model_state(tmp_path))  # weights_only=True inside
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), restored.state_dict().values()))
    assert load_train_state(tmp_path)["epoch"] == 3
    assert load_meta(tmp_path) == json.loads((tmp_path / "meta.json").read_text())


def test_root_cause_is_the_innermost_last_line():
    try:
        try:
            raise ValueError("Traceback ...\n  File x\nValueError: labels out of range")
        except ValueError as inner:
            raise RuntimeError("Training failed") from inner
    except RuntimeError as outer:
        assert root_cause(outer) == "ValueError: labels out of range"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_step_on_gpu():
    from orchestrator.train.steps import StepContext, autocast

    ctx = StepContext(torch.device("cuda"), "bf16", 0.0, lambda s: 0.1)
    model = build_model("cifar_resnet8", 10).cuda().to(memory_format=torch.channels_last)
    with autocast(ctx):
        out = model(torch.randn(4, 3, 32, 32, device="cuda").to(memory_format=torch.channels_last))
    assert out.dtype == torch.bfloat16
