"""`orch sweep` on Ray Tune, as a researcher runs it: 2 architectures x 2 seeds on a small
Fashion-MNIST subset, stopped with `orch stop --save PARENT` while its first two trials train
(the fault hook holds each at a known step until the stop reaches it), `orch resume PARENT`
continuing those two from their step checkpoints and running the other two, then `orch report
PARENT`. Everything is real: the session's Ray, Tune, Ray Train, FFCV, MLflow."""

import json

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.train.precision import choose_precision

from eval_fixtures import all_runs, run_orch
from job_fixtures import DEMO, Notice, fault, orch_process


def write_sweep(folder, data) -> str:
    """Two architectures x two seeds of the demo job, 2 epochs of 500 images, each validated on
    the first 300 validation images, 1 CPU each."""
    sweep = {
        "name": "arch-by-seed",
        "job": str(DEMO),
        "set": {
            "data.train": str(data / "train.beton"),
            "data.val": str(data / "val.beton"),
            "data.max_train_samples": 500,
            "data.max_val_samples": 300,
            "training.epochs": 2,
            "training.batch_size": 100,
            "schedule.warmup_epochs": 0,
            "model.options": {},
            "scaling.num_workers": 1,
            "scaling.cpus_per_worker": 1,
            "checkpoint.storage": str(folder / "ckpt"),
            "tracking.system_metrics": False,
            "tracking.log_model": False,
            "tracking.log_every_n_steps": 5,
            "training.notice_every_n_steps": 1,
        },
        "grid": {"model.arch": ["cifar_plain8", "cifar_resnet8"], "training.seed": [0, 1]},
        "max_concurrent_trials": 2,
    }
    path = folder / "sweep.yaml"
    path.write_text(json.dumps(sweep))  # JSON is YAML
    return str(path)


def test_sweep_stopped_with_save_resumed_and_reported(ray_address, small_fashion, mlflow_uri, tmp_path):
    sweep = write_sweep(tmp_path, small_fashion)

    code, out, err = run_orch("sweep", sweep, "--dry-run", "--output", "json")
    assert code == 0, err
    planned = json.loads(out)["trials"]
    assert [t["overrides"] for t in planned] == [
        {"model.arch": arch, "training.seed": seed} for arch in ("cifar_plain8", "cifar_resnet8") for seed in (0, 1)
    ]
    assert all(t["resources"] == {"CPU": 1} for t in planned)
    assert all_runs(mlflow_uri) == []  # a dry run creates nothing

    notice = Notice(tmp_path)
    proc = orch_process(
        "sweep",
        sweep,
        cwd=tmp_path,
        uri=mlflow_uri,
        ray_address=ray_address,
        fault=fault("hold", epoch=1, step=1, notify=notice.path),
    )
    assert all(line.startswith("hold epoch 1 step 1") for line in notice.wait_for(2))  # trials 0 and 1
    parent = _parent(mlflow_uri)
    code, out, err = run_orch("stop", parent.info.run_id, "--save", "--output", "json")
    assert code == 0, err
    stopped = json.loads(out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "orch resume" in err, err[-3000:]
    assert (
        stopped["status"] == "KILLED" and MlflowClient(mlflow_uri).get_run(parent.info.run_id).info.status == "KILLED"
    )
    assert [r.info.run_id for r in all_runs(mlflow_uri) if r.info.status == "RUNNING"] == []
    before = _children(mlflow_uri, parent.info.run_id)
    assert sorted(before) == [0, 1] and all(status == "KILLED" for status, _ in before.values())  # 2, 3 never started
    saved = stopped["trials_saved"]
    assert set(saved) == {run_id for _, run_id in before.values()}
    assert all(path.endswith("epoch_0001_step_000001") for path in saved.values()), saved

    code, out, err = run_orch("resume", parent.info.run_id, "--output", "json")
    assert code == 0, err[-3000:]
    result = json.loads(out)
    assert result["parent_run_id"] == parent.info.run_id and result["status"] == "FINISHED"
    assert [t["status"] for t in result["trials"]] == ["FINISHED"] * 4
    after = _children(mlflow_uri, parent.info.run_id)
    assert sorted(after) == [0, 1, 2, 3]
    for _, run_id in before.values():  # the stopped trials went on in their own runs, from their checkpoints
        assert (
            run_id in saved and MlflowClient(mlflow_uri).get_run(run_id).data.tags["orch.resumed_from"] == saved[run_id]
        )
    for trial in result["trials"]:
        assert set(trial["metrics"]) >= {"val_top1_error", "train_top1_error", "best_val_top1_error"}
        history = MlflowClient(mlflow_uri).get_metric_history(trial["run_id"], "train_top1_error")
        assert sorted(m.step for m in history) == [0, 1]  # once per epoch
        validated = MlflowClient(mlflow_uri).get_metric_history(trial["run_id"], "val_samples")
        assert [m.value for m in validated] == [300, 300]  # data.max_val_samples
        tags = MlflowClient(mlflow_uri).get_run(trial["run_id"]).data.tags
        assert tags["orch.precision"] == str(choose_precision("auto", "cpu"))  # what the worker trained in

    code, out, _ = run_orch("runs")
    assert code == 0 and "sweep of 4 trials" in out  # the parent is listed with its children

    code, out, err = run_orch("report", parent.info.run_id, "--out", tmp_path / "report", "--output", "json")
    assert code == 0, err
    report = json.loads(out)
    assert len(report["rows"]) == 2 and all(row["n"] == 2 for row in report["rows"])
    assert all(row["final_val_top1_error"]["std"] is not None for row in report["rows"])
    assert report["figures"] and open(report["figures"][0], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    logged = [a.path for a in MlflowClient(mlflow_uri).list_artifacts(parent.info.run_id, "report")]
    assert any(p.endswith(".png") for p in logged) and "report/report.html" in logged


def _parent(uri: str):
    parents = [r for r in all_runs(uri) if r.data.tags.get("orch.kind") == "sweep"]
    assert len(parents) == 1
    return parents[0]


def _children(uri: str, parent_id: str) -> dict[int, tuple[str, str]]:
    runs = [r for r in all_runs(uri) if r.data.tags.get("mlflow.parentRunId") == parent_id]
    return {int(r.data.tags["orch.sweep.trial"]): (r.info.status, r.info.run_id) for r in runs}


# --- the sweep file and its trials, without Ray -------------------------------------------------


def _sweep_file(folder, **keys) -> str:
    path = folder / "s.yaml"
    path.write_text(json.dumps({"job": str(DEMO), **keys}))
    return str(path)


def test_trials_are_cases_times_grid_times_draws_in_order(tmp_path):
    from orchestrator.sweep.driver import plan_sweep

    cases = [{"model.arch": "cifar_plain8", "model.options": {}}, {"model.arch": "cifar_resnet8"}]
    random = {"samples": 2, "seed": 3, "keys": {"optimizer.lr": {"loguniform": [0.01, 1.0]}}}
    path = _sweep_file(tmp_path, cases=cases, grid={"training.seed": [0, 1]}, random=random)
    _, trials = plan_sweep(path, ["training.epochs=1"])
    assert [(t.overrides["model.arch"], t.overrides["training.seed"]) for t in trials] == [
        (arch, seed) for arch in ("cifar_plain8", "cifar_resnet8") for seed in (0, 0, 1, 1)
    ]
    assert all(t.spec.training.epochs == 1 for t in trials)  # --set KEY sets a job key in every trial
    assert trials[0].spec.model.options == {} and trials[4].spec.model.options == {"shortcut": "A"}
    lrs = [t.overrides["optimizer.lr"] for t in trials]
    assert all(0.01 <= lr <= 1.0 for lr in lrs) and len(set(lrs)) == len(lrs)
    assert lrs == [t.overrides["optimizer.lr"] for t in plan_sweep(path)[1]]  # seeded: the same trials again


@pytest.mark.parametrize(
    "keys, overrides, expected",
    [
        ({"grid": {"model.archh": ["x"]}}, [], "(trial 0: model.archh=x): model.archh: unknown key"),
        ({"grid": {"training.seed": []}}, [], "grid: training.seed: list at least one value"),
        ({}, [], "say what varies"),
        ({"grid": {"training.seed": [0]}, "job": "nope.yaml"}, [], "job: nope.yaml not found"),
        ({"grid": {"training.seed": [0]}}, ["max_concurrent_trials=0"], "max_concurrent_trials"),
        ({"random": {"samples": 1, "keys": {"optimizer.lr": {"normal": [0, 1]}}}}, [], "expected one of choice"),
    ],
)
def test_bad_sweeps_are_one_line_errors_naming_the_key(tmp_path, keys, overrides, expected):
    code, _, err = run_orch(
        "sweep", _sweep_file(tmp_path, **keys), "--dry-run", *[a for o in overrides for a in ("--set", o)]
    )
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err


def test_concurrency_fits_the_largest_trial_into_the_cluster(tmp_path):
    from orchestrator.sweep.driver import plan_sweep
    from orchestrator.sweep.trials import concurrency

    path = _sweep_file(tmp_path, grid={"scaling.cpus_per_worker": [1, 2]})
    _, trials = plan_sweep(path)
    assert concurrency(trials, None, nodes=[{"CPU": 4}, {"CPU": 2}]) == 3  # 6 CPUs / 2 for the largest
    assert concurrency(trials, None, nodes=[{"CPU": 1}]) == 1
    assert concurrency(trials, 5, nodes=[{"CPU": 1}]) == 5


@pytest.mark.parametrize(
    "name, trials",
    [
        ("degradation_cifar10", 24),
        ("resnet110_seeds", 5),
        ("shortcuts_resnet34", 3),
        ("plain_vs_resnet_imagenet", 12),
        ("degradation_fashion", 16),
    ],
)
def test_the_papers_sweeps_list_their_trials(name, trials):
    from orchestrator.sweep.driver import plan_sweep

    assert len(plan_sweep(DEMO.parent / "sweeps" / f"{name}.yaml")[1]) == trials


def test_asha_stops_a_worse_trial_at_a_rung_never_at_the_last_epoch_and_remembers_it(tmp_path):
    """ASHA as `scheduler: asha` configures it (Tune's scheduler, fed results by hand here)."""
    from types import SimpleNamespace

    from orchestrator.sweep.driver import plan_sweep
    from orchestrator.sweep.tune_run import TIME_ATTR, EarlyStopping

    sweep, _ = plan_sweep(_sweep_file(tmp_path, grid={"training.seed": [0, 1]}, scheduler="asha"))
    assert (sweep.scheduler.kind, sweep.scheduler.metric, sweep.scheduler.grace_period) == ("asha", "val_top1_error", 1)
    asha = EarlyStopping(time_attr=TIME_ATTR, metric="val_top1_error", mode="min", max_t=3, grace_period=1)
    good, bad = SimpleNamespace(trial_id="good"), SimpleNamespace(trial_id="bad")
    for trial in (good, bad):
        asha.on_trial_add(None, trial)
    assert asha.on_trial_result(None, good, {TIME_ATTR: 1, "val_top1_error": 20.0}) == asha.CONTINUE
    assert asha.on_trial_result(None, bad, {TIME_ATTR: 1, "val_top1_error": 80.0}) == asha.STOP
    assert asha.on_trial_result(None, good, {TIME_ATTR: 3, "val_top1_error": 10.0}) == asha.CONTINUE
    assert asha.stopped == {"bad"}
