"""Pieces of the worker loop that need no Ray: precision, seeding, optimizer groups,
checkpoint files, how a failure's cause is reported, and the training step itself (exact
loss sums, the data-wait share, no host sync inside the batch loop)."""

import copy
import json
import time

import pytest
import torch

from orchestrator.models import build_model
from orchestrator.spec.schema import OptimizerSpec
from orchestrator.targets.local import root_cause
from orchestrator.train.checkpoint import load_meta, load_model_state, load_train_state, save_checkpoint
from orchestrator.train.loop import _load_into, seed_everything
from orchestrator.train.optim import build_optimizer
from orchestrator.train.precision import CpuInfo, choose_precision, cpu_info
from orchestrator.train.steps import StepContext, evaluate, train_one_epoch

CPUS = {
    "amd_bf16": CpuInfo("AuthenticAMD", frozenset({"avx2", "avx512f", "avx512_bf16"})),
    "intel_amx": CpuInfo("GenuineIntel", frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})),
    "intel_bf16_no_amx": CpuInfo("GenuineIntel", frozenset({"avx512f", "avx512_bf16", "avx512_fp16"})),
    "avx2_only": CpuInfo("AuthenticAMD", frozenset({"avx2", "fma"})),
}


@pytest.mark.parametrize(
    "cpu, expected",
    [("amd_bf16", "bf16"), ("intel_amx", "bf16"), ("intel_bf16_no_amx", "fp32"), ("avx2_only", "fp32")],
)
def test_precision_auto_on_a_cpu_is_bf16_where_its_bf16_steps_are_faster(cpu, expected):
    chosen = choose_precision("auto", "cpu", CPUS[cpu])
    assert chosen.value == expected
    assert str(chosen).startswith(f"{expected} (auto: ")  # the reason is recorded with it


def test_precision_auto_is_bf16_on_gpu_and_a_set_precision_is_kept():
    assert choose_precision("auto", "cuda").value == "bf16"
    for cpu in CPUS.values():
        assert choose_precision("fp16", "cpu", cpu).value == "fp16"
        assert choose_precision("fp32", "cpu", cpu).value == "fp32"
        assert choose_precision("bf16", "cuda", cpu).value == "bf16"


def test_cpu_info_reads_the_vendor_and_flags(tmp_path):
    text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n"
    (tmp_path / "cpuinfo").write_text(text)
    info = cpu_info(tmp_path / "cpuinfo")
    assert info == CpuInfo("AuthenticAMD", frozenset({"fpu", "avx2", "avx512_bf16"})) and info.native_bf16
    assert cpu_info(tmp_path / "missing") == CpuInfo("unknown", frozenset())
    assert choose_precision("auto", "cpu", cpu_info(tmp_path / "missing")).value == "fp32"


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


class Batches:
    """An in-memory loader of (images, labels) batches; `exhausted` turns true when its
    iterator has handed over the last one, and each batch can be made to keep it waiting."""

    def __init__(self, sizes=(5, 3, 4), delay=0.0, device="cpu", side=6):
        gen = torch.Generator().manual_seed(0)
        self.batches = [
            (
                torch.randn(n, 3, side, side, generator=gen).to(device, memory_format=torch.channels_last),
                torch.randint(0, 3, (n,), generator=gen).to(device),
            )
            for n in sizes
        ]
        self.delay = delay
        self.exhausted = False

    def __iter__(self):
        self.exhausted = False
        for batch in self.batches:
            time.sleep(self.delay)
            yield batch
        self.exhausted = True


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    )


def _train(model, loader, before_step=None, device="cpu", precision="fp32", optimizer=None, **kwargs) -> dict:
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=False)
    ctx = StepContext(torch.device(device), precision, 0.1, lambda step: 0.1 / (step + 1), before_step)
    return train_one_epoch(model, loader, optimizer, scaler, ctx, first_step=7, **kwargs)


def test_train_loss_is_the_mean_per_sample_loss():
    model, loader = _tiny_model(), Batches()
    reference = copy.deepcopy(model)
    got = _train(model, loader)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    losses, top1, top5 = [], 0, 0
    for step, (images, labels) in enumerate(loader.batches, start=7):
        optimizer.param_groups[0]["lr"] = 0.1 / (step + 1)
        logits = reference(images)
        loss = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
        # Training error counted independently, on the batch as it was trained (before the update).
        ranked = logits.argsort(dim=1, descending=True)
        top1 += int((ranked[:, 0] == labels).sum())
        top5 += int((ranked[:, :5] == labels[:, None]).any(dim=1).sum())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item() * len(labels))
    assert got["train_samples"] == 12
    assert got["train_loss"] == pytest.approx(sum(losses) / 12, rel=1e-6)
    assert got["train_top1_error"] == pytest.approx(100 * (1 - top1 / 12))
    assert got["train_top5_error"] == pytest.approx(100 * (1 - top5 / 12)) == 0.0  # 3 classes
    assert got["lr"] == 0.1 / 10  # the last step's (global step 9)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


def test_an_epoch_stopped_at_a_step_and_continued_equals_the_whole_epoch():
    """What a step checkpoint carries (the epoch's progress) and a restored worker continues
    from: the rest of the batches, the schedule at the same step, the whole epoch's train_loss."""
    whole_model, loader = _tiny_model(), Batches(sizes=(5, 3, 4, 6))
    whole = _train(whole_model, loader)
    model = _tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    saved = {}

    def at_step(batch, progress):  # the loop's hook: checkpoint and stop before batch 2
        if batch == 2:
            saved["progress"] = progress()
            return True
        return False

    assert _train(model, loader, optimizer=optimizer, at_step=at_step) is None
    progress = saved["progress"]
    assert (progress.batches, progress.samples) == (2, 8)
    rest = Batches(sizes=(5, 3, 4, 6))
    rest.batches = rest.batches[2:]  # the loader skips what the checkpoint trained
    continued = _train(model, rest, optimizer=optimizer, start=progress)
    assert continued["train_samples"] == whole["train_samples"] == 18
    assert continued["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-9)
    assert continued["train_top1_error"] == pytest.approx(whole["train_top1_error"])
    assert continued["lr"] == whole["lr"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), whole_model.state_dict().values()))


def test_data_wait_fraction_grows_with_a_slow_loader():
    quick = _train(_tiny_model(), Batches())["data_wait_fraction"]
    slow = _train(_tiny_model(), Batches(delay=0.01))["data_wait_fraction"]
    assert 0 <= quick < slow <= 1


_HOST_SYNCS = ("item", "tolist", "cpu", "numpy", "__int__", "__float__", "__bool__", "__index__")


def _forbid_host_sync_until_exhausted(monkeypatch, loader: Batches) -> None:
    """Make every way of reading a tensor back to the host raise until `loader` is exhausted."""
    for name in _HOST_SYNCS:
        original = getattr(torch.Tensor, name)

        def guarded(self, *args, _original=original, _name=name, **kwargs):
            if not loader.exhausted:
                raise AssertionError(f"Tensor.{_name}() inside the batch loop: a host sync every step")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, guarded)


def test_no_host_sync_inside_the_batch_loops(monkeypatch):
    model, train, val = _tiny_model(), Batches(), Batches(sizes=(4, 6))
    _forbid_host_sync_until_exhausted(monkeypatch, train)
    train_metrics = _train(model, train)
    assert train.exhausted and train_metrics["train_samples"] == 12
    monkeypatch.undo()
    _forbid_host_sync_until_exhausted(monkeypatch, val)
    ctx = StepContext(torch.device("cpu"), "fp32", 0.0, lambda step: 0.1)
    assert evaluate(model, val, ctx)["val_samples"] == 10
    monkeypatch.undo()
    # The guard catches what runs per step: a hook that reads a loss back fails the epoch.
    _forbid_host_sync_until_exhausted(monkeypatch, train)
    with pytest.raises(AssertionError, match="Tensor.item"):
        _train(model, train, before_step=lambda step: torch.ones(()).item())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_step_on_gpu():
    from orchestrator.train.steps import StepContext, autocast

    ctx = StepContext(torch.device("cuda"), "bf16", 0.0, lambda s: 0.1)
    model = build_model("cifar_resnet8", 10).cuda().to(memory_format=torch.channels_last)
    with autocast(ctx):
        out = model(torch.randn(4, 3, 32, 32, device="cuda").to(memory_format=torch.channels_last))
    assert out.dtype == torch.bfloat16


class SyncFreeBatches(Batches):
    """Batches during whose iteration any CUDA call that synchronizes with the host raises."""

    def __iter__(self):
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield from super().__iter__()
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_train_one_epoch_on_gpu_bf16_channels_last():
    from orchestrator.train.steps import configure_backends

    configure_backends(torch.device("cuda"))
    model = build_model("cifar_resnet8", 3).cuda().to(memory_format=torch.channels_last)
    loader = SyncFreeBatches(sizes=(8, 8, 5), device="cuda", side=32)
    got = _train(model, loader, device="cuda", precision="bf16")
    assert got["train_samples"] == 21 and 0 < got["train_loss"] < 10
    ctx = StepContext(torch.device("cuda"), "bf16", 0.0, lambda step: 0.1)
    assert evaluate(model, loader, ctx)["val_samples"] == 21


@pytest.mark.parametrize("saved, resumed", [("fp32", "fp16"), ("fp16", "bf16"), ("fp16", "fp16")])
def test_resume_may_change_precision(tmp_path, saved, resumed):
    """A checkpoint written under one precision loads under another: the fp16 loss scale goes
    on only from fp16 to fp16 (a resume that changed precision used to crash in the loop)."""
    model = build_model("cifar_resnet8", 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    old = torch.amp.GradScaler("cpu", enabled=saved == "fp16", init_scale=1024.0)
    state = {"optimizer": optimizer.state_dict(), "scaler": old.state_dict(), "epoch": 4, "step": 40, "seed": 0}
    save_checkpoint(tmp_path, model.state_dict(), state, {"epoch": 4})
    new = torch.amp.GradScaler("cpu", enabled=resumed == "fp16")
    assert _load_into(tmp_path, build_model("cifar_resnet8", 10), optimizer, new).epoch == 5
    if saved == resumed == "fp16":
        assert new.get_scale() == 1024.0


def test_deterministic_turns_on_pytorchs_deterministic_algorithms():
    from orchestrator.train.steps import configure_backends

    try:
        configure_backends(torch.device("cpu"), deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.set_float32_matmul_precision("highest")


def test_step_metrics_are_logged_every_n_steps_by_rank_0_only(mlflow_uri):
    """Points at global steps that are multiples of N, sent by a background thread; a rank
    other than 0 sends nothing."""
    from mlflow.tracking import MlflowClient

    from orchestrator.train.step_metrics import StepLogger, every_n_steps

    client = MlflowClient(mlflow_uri)
    run_id = client.create_run(client.create_experiment("steps")).info.run_id
    assert every_n_steps(10) == 1 and every_n_steps(5000) == 156 and every_n_steps(5000, 7) == 7
    with StepLogger(mlflow_uri, run_id, every=3, world_size=2, active=True) as logger:
        logger.tag("orch.steps_per_epoch", "10")
        for step in range(10):
            logger(step, torch.tensor(2.0 - step / 10), 0.1 * step, batch_size=4)
    with StepLogger(mlflow_uri, run_id, every=1, world_size=2, active=False) as other_rank:
        other_rank(10, torch.tensor(9.0), 9.0, batch_size=4)
    losses = {m.step: m.value for m in client.get_metric_history(run_id, "step/train_loss")}
    assert losses == pytest.approx({0: 2.0, 3: 1.7, 6: 1.4, 9: 1.1})
    assert sorted(m.step for m in client.get_metric_history(run_id, "step/lr")) == [0, 3, 6, 9]
    rates = client.get_metric_history(run_id, "step/images_per_second")
    assert sorted(m.step for m in rates) == [3, 6, 9] and all(m.value > 0 for m in rates)
    assert client.get_run(run_id).data.tags["orch.steps_per_epoch"] == "10"


def test_after_an_answered_preemption_a_failing_collective_waits_for_the_restart():
    """Ray charges an error a worker raises before its preempted peer's death is seen to
    training.max_failures; once the notice is answered, a rank waits for Ray's restart instead."""
    import threading

    from orchestrator.train.loop import Preemption, _until_restart
    from orchestrator.train.notices import PREEMPTED, Notice

    def fail_inside(preemption, raised):
        try:
            with _until_restart(preemption):
                raise RuntimeError("Connection closed by peer")  # gloo, its peer gone with its node
        except RuntimeError as exc:
            raised.append(exc)

    raised = []
    waiting = threading.Thread(target=fail_inside, args=(Preemption(Notice(PREEMPTED), "epoch 1"), raised), daemon=True)
    waiting.start()
    waiting.join(1.5)
    assert waiting.is_alive() and not raised  # holds until Ray ends the worker group
    fail_inside(Preemption(), raised)  # no preemption answered: an error is an error
    assert len(raised) == 1


@pytest.mark.parametrize("world_size, expected_batches", [(2, 3), (1, None)])
def test_a_step_checkpoint_continues_its_epoch_only_under_the_layout_that_wrote_it(
    tmp_path, monkeypatch, world_size, expected_batches
):
    """Written by 2 workers after 3 batches of epoch 1: 2 workers go on at batch 3; 1 worker
    would read other shards, so epoch 1 starts again from its first batch."""
    import ray.train

    from orchestrator.train.loop import _restore

    model = build_model("cifar_resnet8", 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    progress = {"batches": 3, "loss_sum": 6.0, "samples": 600, "top1": 300.0, "top5": 500.0}
    state = {"optimizer": optimizer.state_dict(), "scaler": {}, "epoch": 1, "step": 7, "seed": 0, "progress": progress}
    layout = {"world_size": 2, "batch_size": 100, "seed": 0}
    save_checkpoint(tmp_path / "epoch_0001_step_000003", model.state_dict(), state, {"epoch": 1, "layout": layout})
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)  # no worker group restart: a resume
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    config = {"resume_from": str(tmp_path / "epoch_0001_step_000003")}
    start, told = _restore(config, model, optimizer, scaler, dict(layout, world_size=world_size))
    assert start.epoch == 1 and told == {"restored_from": config["resume_from"]}
    assert (start.progress.batches if start.progress else None) == expected_batches
