"""`orch ensemble` on three Fashion-MNIST runs, checked against an independent computation from
the raw IDX test files; mixed architectures; bad input.

One member is the session's trained run (tests/conftest.py: cifar_resnet8, 2,000 images); the
other two are runs whose checkpoints are made by hand, which the arithmetic checked here needs
no more than trained ones.
"""

import hashlib
import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient

from orchestrator.evaluation import ensemble, evaluate
from orchestrator.evaluation.scoring import Tally, combine, parse_weights
from orchestrator.models import build_model
from orchestrator.train.checkpoint import load_meta, load_model_state
from orchestrator.train.metrics import EvalCounts

from eval_fixtures import all_runs, fake_run, make_checkpoint, run_orch, write_dataset
from job_fixtures import SMALL_VAL, raw_fashion_mnist_test

SEEDS = (0, 1, 2)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(session_store):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", session_store)
        yield session_store


@pytest.fixture(scope="module")
def members(trained_run, small_fashion, store, tmp_path_factory) -> list[dict]:
    """Three runs: the session's trained run (seed 0) and two whose checkpoints are made by hand
    (random weights, the same classes and normalization), each an MLflow run named member-seedN."""
    meta = load_meta(trained_run["checkpoint"])
    trained = [{"run_id": trained_run["run_id"], "checkpoint": trained_run["checkpoint"]}]
    for seed in SEEDS[1:]:
        root = tmp_path_factory.mktemp(f"member{seed}")
        checkpoint = make_checkpoint(
            root / "epoch_0000",
            arch="cifar_resnet8",
            augment="cifar",
            size=28,
            val=small_fashion / "val.beton",
            seed=seed,
            classes=meta["classes"],
            mean=meta["preprocess"]["mean"],
            std=meta["preprocess"]["std"],
        )
        trained.append({"run_id": fake_run(store, f"member-seed{seed}", root), "checkpoint": checkpoint})
    return trained


@pytest.fixture(scope="module")
def raw_logits(members) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each member's logits on the raw test images, computed here without orch's evaluation code."""
    x, y = raw_fashion_mnist_test(SMALL_VAL)
    outputs = []
    for member in members:
        meta = load_meta(member["checkpoint"])
        model = build_model(meta["arch"], meta["num_classes"], **meta["spec"]["model"]["options"])
        model.load_state_dict(load_model_state(member["checkpoint"]))
        model.eval()
        mean = torch.tensor(meta["preprocess"]["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(meta["preprocess"]["std"]).view(1, 3, 1, 1)
        with torch.no_grad():
            outputs.append(model((x - mean) / std))
    return outputs, y


def error(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (1 - (predictions == labels).float().mean().item())


def test_softmax_ensemble_of_three_seeds_matches_an_independent_average(members, raw_logits, store, small_fashion):
    ids = [m["run_id"] for m in members]
    code, out, err = run_orch(
        "ensemble", "--runs", ",".join(ids), "--data", small_fashion / "val.beton", "--workers", "2", "--output", "json"
    )
    assert code == 0, err
    outcome = json.loads(out)  # stdout is exactly one JSON object
    assert set(outcome) == {"run_id", "members", "ensemble"}
    assert [m["run_id"] for m in outcome["members"]] == ids

    logits, y = raw_logits
    mean_probs = torch.stack([F.softmax(z, dim=1) for z in logits]).mean(dim=0)
    ens = outcome["ensemble"]
    assert ens["samples"] == SMALL_VAL and ens["images_per_second"] > 0
    # --workers alone asks for CPU tasks, whatever GPUs the cluster has.
    assert (ens["device"], ens["gpus"], ens["workers"], ens["precision"]) == ("cpu", 0, 2, "fp32")
    assert abs(ens["top1_error"] - error(mean_probs.argmax(1), y)) <= 0.1
    top5 = mean_probs.topk(5, dim=1).indices
    assert abs(ens["top5_error"] - 100.0 * (1 - (top5 == y[:, None]).any(1).float().mean().item())) <= 0.1
    assert ens["loss"] == pytest.approx(F.nll_loss(mean_probs.log(), y).item(), rel=1e-3)
    for member, z, trained in zip(outcome["members"], logits, members):
        assert abs(member["top1_error"] - error(z.argmax(1), y)) <= 0.1
        assert member["sha256"] == hashlib.sha256((trained["checkpoint"] / "model.pt").read_bytes()).hexdigest()
    best = min(m["top1_error"] for m in outcome["members"])
    assert ens["gain_top1_error"] == pytest.approx(best - ens["top1_error"])

    client = MlflowClient(store)
    run = client.get_run(outcome["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "orch-ensembles"
    assert run.data.tags["orch.ensemble.members"] == ",".join(ids)
    assert (run.data.params["device"], run.data.params["workers"], run.data.params["precision"]) == ("cpu", "2", "fp32")
    for i, (member, trained) in enumerate(zip(outcome["members"], members)):
        assert run.data.params[f"member{i}.run_id"] == trained["run_id"]
        assert run.data.params[f"member{i}.checkpoint"] == str(trained["checkpoint"])
        assert run.data.params[f"member{i}.sha256"] == member["sha256"]
        assert run.data.metrics[f"member{i}_top1_error"] == pytest.approx(member["top1_error"])
    assert run.data.metrics["top1_error"] == pytest.approx(ens["top1_error"])
    assert run.data.metrics["top5_error"] == pytest.approx(ens["top5_error"])
    recorded = json.loads(Path(client.download_artifacts(run.info.run_id, "ensemble.json")).read_text())
    assert [m["run_id"] for m in recorded["members"]] == ids


def independent_vote(logits: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Weighted majority of top-1 labels; ties to the higher weighted-mean softmax, then the lower label."""
    tops = [z.argmax(1).tolist() for z in logits]
    mean_probs = sum(w * F.softmax(z, dim=1) for w, z in zip(weights, logits)).tolist()
    winners = []
    for n in range(len(mean_probs)):
        votes = defaultdict(float)
        for w, top in zip(weights, tops):
            votes[top[n]] += w
        most = max(votes.values())
        winners.append(max((c for c, v in votes.items() if v == most), key=lambda c: (mean_probs[n][c], -c)))
    return torch.tensor(winners)


def test_vote_and_logits_with_weights(members, raw_logits):
    names = ",".join(f"member-seed{seed}" for seed in SEEDS)  # runs by name this time
    logits, y = raw_logits  # the members' own validation set
    weights = [0.25, 0.25, 0.5]  # the third member ties the other two together: tie-breaks matter
    voted = ensemble(names, combine="vote", weights="1,1,2")
    assert voted["ensemble"]["samples"] == SMALL_VAL
    assert abs(voted["ensemble"]["top1_error"] - error(independent_vote(logits, weights), y)) <= 0.1
    assert "loss" not in voted["ensemble"] and [m["weight"] for m in voted["members"]] == weights
    # No TTA is the training loop's own validation: the trained member's checkpoint has the same
    # numbers (within one image).
    member, meta = voted["members"][0], load_meta(members[0]["checkpoint"])
    assert member["top1_error"] == pytest.approx(meta["metrics"]["val_top1_error"], abs=100 / SMALL_VAL + 1e-9)
    assert member["top5_error"] == pytest.approx(meta["metrics"]["val_top5_error"], abs=100 / SMALL_VAL + 1e-9)

    averaged = ensemble(names, combine="logits", weights="1,1,2", workers=2)
    mean_logits = sum(w * z for w, z in zip(weights, logits))
    assert abs(averaged["ensemble"]["top1_error"] - error(mean_logits.argmax(1), y)) <= 0.1


def test_members_of_different_depths_and_archs(ray_cluster, store, tmp_path):
    val = write_dataset(tmp_path, (40, 80))
    dirs = [
        make_checkpoint(tmp_path / arch / "epoch_0000", arch=arch, augment="imagenet", size=32, val=val, seed=i)
        for i, arch in enumerate(("cifar_resnet8", "cifar_resnet14", "resnet18"))
    ]
    code, out, err = run_orch(
        "ensemble", "--runs", ",".join(map(str, dirs)), "--tta", "10crop", "--workers", "2", "--name", "mixed"
    )
    assert code == 0, err
    assert "cifar_resnet14" in out and "resnet18" in out and "gain over the best member" in out
    run = [r for r in all_runs(store) if r.info.run_name == "mixed"][0]
    assert run.data.params["member2.arch"] == "resnet18" and run.data.params["tta"] == "10crop"
    assert run.data.params["member1.checkpoint"] == str(dirs[1]) and run.data.params["member1.run_id"] == "(none)"
    # With one member the ensemble's numbers are that member's.
    single = evaluate(str(dirs[2]), tta="10crop")
    assert f"{single['top1_error']:.2f}%" in out.splitlines()[3]


def test_bad_input_is_one_line_exit_2_and_records_nothing(members, store, tmp_path, small_fashion):
    ids = [m["run_id"] for m in members]
    fake_run(store, "untrained", None)
    (tmp_path / "no-meta").mkdir()
    fashion_classes = load_meta(members[0]["checkpoint"])["classes"]
    four = make_checkpoint(
        tmp_path / "four" / "epoch_0000",
        arch="cifar_resnet8",
        augment="cifar",
        size=28,
        val=small_fashion / "val.beton",
        classes=("a", "b", "c", "d"),
    )
    elsewhere = shutil.copytree(members[2]["checkpoint"], tmp_path / "elsewhere" / "epoch_0000")
    meta = load_meta(elsewhere)
    meta["spec"]["data"]["val"] = str(tmp_path / "other" / "val.beton")
    (elsewhere / "meta.json").write_text(json.dumps(meta))
    (elsewhere / "checksums.json").unlink()  # else the edit is (rightly) refused as damage
    assert len(fashion_classes) == 10
    cases = [
        ([f"{ids[0]},0123456789abcdef0123456789abcdef"], "unknown run '0123456789abcdef0123456789abcdef'"),
        ([f"{ids[0]},no-such-run"], "unknown run 'no-such-run'"),
        ([ids[0]], "an ensemble needs at least two runs"),
        ([f"{ids[0]},{ids[1]},{ids[0]}"], f"{ids[0]} is listed twice"),
        ([f"{ids[0]},member-seed0"], f"are the same run {ids[0]}"),
        ([f"{ids[0]},{ids[1]}", "--weights", "1,2,3"], "3 weights for 2 runs"),
        ([f"{ids[0]},{ids[1]}", "--weights", "1,-1"], "every weight must be a positive number"),
        ([f"{ids[0]},untrained"], "has no checkpoint"),
        ([f"{ids[0]},{tmp_path / 'no-meta'}"], "no-meta: not a checkpoint directory (no meta.json)"),
        ([f"{ids[0]},{four}"], f"checkpoint {four} has 4 classes but run {ids[0]} has 10"),
        ([f"{ids[1]},{elsewhere}"], f"checkpoint {elsewhere} was validated on {tmp_path / 'other' / 'val.beton'}"),
        ([f"{ids[0]},{ids[1]}", "--gpus", "1", "--workers", "2"], "--gpus 1 and --workers 2: --gpus runs one task"),
        ([f"{ids[0]},file://{tmp_path}/nowhere"], f"file://{tmp_path}/nowhere: nothing there"),
    ]
    before = len(all_runs(store))
    for runs, fragment in cases:
        code, out, err = run_orch("ensemble", "--runs", *runs)
        lines = [line for line in err.splitlines() if line.startswith("orch: error:")]
        assert code == 2 and len(lines) == 1 and fragment in lines[0], (runs, err)
        assert out == ""
    assert len(all_runs(store)) == before  # no ensemble run was created


def test_combining_rules():
    a = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    b = torch.log(torch.tensor([[0.1, 0.5, 0.4]]))
    c = torch.log(torch.tensor([[0.2, 0.2, 0.6]]))
    softmax = combine([a, b], [0.5, 0.5], "softmax").exp()
    assert torch.allclose(softmax, torch.tensor([[0.35, 0.4, 0.25]]))
    logits = combine([a, b], [0.5, 0.5], "logits")
    assert torch.allclose(logits, F.log_softmax((a + b) / 2, dim=1))
    # One vote each for classes 0, 1, 2: the highest mean softmax (class 2: 0.367) wins, then 1 (0.333).
    assert combine([a, b, c], [1 / 3] * 3, "vote").argsort(dim=1, descending=True).tolist() == [[2, 1, 0]]
    # Class 1 gets two votes of three and wins despite class 0's softmax.
    assert combine([b, b, a], [1 / 3] * 3, "vote").argmax(1).item() == 1
    assert parse_weights("1,1,2", 3) == [0.25, 0.25, 0.5] and parse_weights(None, 4) == [0.25] * 4


def test_counts_kept_on_the_device_are_the_training_loops_counts():
    """Tally adds up on the scores' device (no host read per batch): the same numbers as EvalCounts."""
    torch.manual_seed(0)
    members = lambda n: [F.log_softmax(3 * torch.randn(n, 7), dim=1) for _ in range(3)]
    batches = [(members(n), torch.randint(0, 7, (n,))) for n in (5, 1)]  # a batch of one too
    weights = [0.25, 0.25, 0.5]
    for how in ("softmax", "vote"):
        tally, want = Tally(3, weights, how), [EvalCounts() for _ in range(4)]
        for scores, labels in batches:
            tally.update(scores, labels)
            for counts, s in zip(want, scores + [combine(scores, weights, how)]):
                loss = 0.0 if how == "vote" and counts is want[-1] else F.nll_loss(s, labels, reduction="sum").item()
                counts.update(s, labels, loss)
        assert torch.equal(tally.as_tensor(), torch.stack([c.counts for c in want]))
