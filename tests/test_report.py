"""`orch report` on runs made by hand in a real MLflow store: a sweep of 2 architectures x 2
seeds (and a KILLED trial), runs on CIFAR-10, ImageNet and Fashion-MNIST, an ensemble run.
Every number the report shows is computed again here from the values logged."""

import json
import shutil
import statistics
from pathlib import Path

import pytest
from matplotlib.image import imread
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from orchestrator.cli.main import main
from orchestrator.errors import OrchError
from orchestrator.report import build_report, build_rows, collect, verdicts
from orchestrator.report.paper import compare
from orchestrator.report.table import summarize

FASHION = "/data/fashion-mnist/train.beton"
# (arch, seed) -> per-epoch train and val top-1 errors and val top-5 errors, 3 epochs
CURVES = {
    ("cifar_plain20", 0): ([50.0, 40.0, 30.0], [55.0, 45.0, 36.0], [20.0, 15.0, 10.0]),
    ("cifar_plain20", 1): ([52.0, 42.0, 34.0], [57.0, 44.0, 39.0], [22.0, 16.0, 12.0]),
    ("cifar_resnet20", 0): ([45.0, 30.0, 20.0], [50.0, 38.0, 28.0], [18.0, 12.0, 8.0]),
    ("cifar_resnet20", 1): ([44.0, 29.0, 18.0], [49.0, 35.0, 27.5], [17.0, 11.0, 7.0]),
}


@pytest.fixture(scope="module")
def store(empty_store, tmp_path_factory) -> dict:
    """A store with an experiment whose artifacts live in the test's folder."""
    root = tmp_path_factory.mktemp("report")
    shutil.copyfile(empty_store, root / "mlflow.db")  # conftest.empty_store: tables made once
    uri = f"sqlite:///{root / 'mlflow.db'}"
    experiment = MlflowClient(uri).create_experiment("reports", artifact_location=str(root / "artifacts"))
    return {"uri": uri, "experiment": experiment, "root": root}


def make_run(store, name, params, curves=None, status="FINISHED", tags=None, metrics=None) -> str:
    """A run with `params`, per-epoch metrics from curves = (train, val, val5), end metrics."""
    client = MlflowClient(store["uri"])
    run_id = client.create_run(store["experiment"], run_name=name, tags=tags or {}).info.run_id
    logged = [Param(k, str(v)) for k, v in dict(params, name=name).items()]
    values = []
    if curves:
        for key, series in zip(("train_top1_error", "val_top1_error", "val_top5_error"), curves):
            values += [Metric(key, v, 0, step) for step, v in enumerate(series)]
        values.append(Metric("best_val_top1_error", min(curves[1]), 0, 0))
    values += [Metric(k, v, 0, 0) for k, v in (metrics or {}).items()]
    client.log_batch(run_id, metrics=values, params=logged)
    client.set_terminated(run_id, status=status)
    return run_id


def cifar_params(arch, seed, train=FASHION, classes=10, **more) -> dict:
    return {"model.arch": arch, "training.seed": seed, "data.train": train, "model.num_classes": classes, **more}


@pytest.fixture(scope="module")
def sweep(store) -> dict:
    """A FINISHED sweep parent, its 4 FINISHED trials and a KILLED one."""
    parent = make_run(store, "sweep-degradation", {}, tags={"orch.kind": "sweep"})
    trials = {}
    for trial, ((arch, seed), curves) in enumerate(CURVES.items()):
        trials[arch, seed] = make_run(
            store, f"trial-{trial}", cifar_params(arch, seed), curves, tags=_trial_tags(parent, trial, arch, seed)
        )
    killed = make_run(
        store,
        "trial-4",
        cifar_params("cifar_resnet20", 2),
        ([60.0], [61.0], [30.0]),
        status="KILLED",
        tags=_trial_tags(parent, 4, "cifar_resnet20", 2),
    )
    return {"parent": parent, "trials": trials, "killed": killed}


def _trial_tags(parent, trial, arch, seed) -> dict:
    overrides = json.dumps({"model.arch": arch, "training.seed": seed})
    return {"mlflow.parentRunId": parent, "orch.sweep.trial": str(trial), "orch.sweep.overrides": overrides}


def test_sweep_report_tabulates_plots_and_logs_to_the_parent(store, sweep, tmp_path):
    out = build_report(store["uri"], sweep["parent"], tmp_path / "out")

    assert set(out) == {"rows", "figures", "verdicts", "run_id", "html", "skipped"}
    assert out["run_id"] == sweep["parent"]
    rows = {row["arch"]: row for row in out["rows"]}
    assert list(rows) == ["cifar_plain20", "cifar_resnet20"]  # plain first
    for arch, row in rows.items():
        train, val, val5 = zip(*(CURVES[arch, seed] for seed in (0, 1)))
        expect = {
            "final_val_top1_error": [v[-1] for v in val],
            "best_val_top1_error": [min(v) for v in val],
            "final_val_top5_error": [v[-1] for v in val5],
            "final_train_top1_error": [t[-1] for t in train],
        }
        assert row["n"] == 2 and row["dataset"] == "fashion-mnist" and row["config"] == {"model.arch": arch}
        for key, values in expect.items():
            assert row[key]["mean"] == pytest.approx(statistics.mean(values)), key
            assert row[key]["std"] == pytest.approx(statistics.stdev(values)), key
            assert row[key]["n"] == 2
        best = row["best_of_n_val_top1_error"]
        assert best["value"] == min(expect["best_val_top1_error"]) and best["n"] == 2
        assert row["curves"]["val_top1_error"]["mean"] == pytest.approx([statistics.mean(e) for e in zip(*val)])
        assert row["paper"] is None  # Fashion-MNIST: the paper has no number
    assert rows["cifar_plain20"]["residual"] is False and rows["cifar_resnet20"]["shortcut"] == "A"
    assert "plain-20 (cifar_plain20; plain)" == rows["cifar_plain20"]["label"]
    assert out["skipped"] == [
        {"run_id": sweep["killed"], "name": "trial-4", "status": "KILLED", "reason": "not FINISHED"}
    ]
    assert out["verdicts"] == []  # one depth of each kind: no depth finding to check

    (figure,) = map(Path, out["figures"])
    assert figure.read_bytes().startswith(b"\x89PNG") and imread(figure).shape[0] > 100
    page = Path(out["html"]).read_text()
    assert "<table>" in page and "plain-20 (cifar_plain20; plain)" in page and "37.50 ± 2.12 (2)" in page
    assert '<img alt="curves-fashion-mnist.png" src="data:image/png;base64,iVBORw0KGgo' in page
    assert "http://" not in page and "https://" not in page
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["rows"][0]["label"] == out["rows"][0]["label"] and saved["paper"]

    client = MlflowClient(store["uri"])
    logged = {Path(a.path).name for a in client.list_artifacts(sweep["parent"], "report")}
    assert logged == {"curves-fashion-mnist.png", "report.json", "report.txt", "report.md", "report.html"}
    assert client.get_run(sweep["parent"]).info.status == "FINISHED"


def test_depth_verdicts_and_a_report_run_for_a_list(store, tmp_path):
    plain = [
        make_run(store, f"p{depth}-{seed}", cifar_params(f"cifar_plain{depth}", seed), curves)
        for depth, seed, curves in (
            (20, 0, ([30.0, 10.0], [35.0, 15.0], [5.0, 3.0])),
            (20, 1, ([31.0, 11.0], [36.0, 16.0], [5.0, 3.0])),
            (56, 0, ([40.0, 20.0], [45.0, 25.0], [6.0, 4.0])),
            (56, 1, ([41.0, 22.0], [46.0, 27.0], [6.0, 4.0])),
        )
    ]
    residual = [
        make_run(
            store, f"r{depth}", cifar_params(f"cifar_resnet{depth}", 0), ([30.0, err], [35.0, err + 4], [5.0, 3.0])
        )
        for depth, err in ((20, 9.0), (56, 6.0))
    ]
    out = build_report(store["uri"], ",".join(plain + residual), tmp_path / "list")

    plain_verdict, residual_verdict = out["verdicts"]
    assert plain_verdict["finding"] == "the deeper plain net has the higher training error"
    assert plain_verdict["holds"] is True
    assert "plain-56 (cifar_plain56) 21.00% ± 1.41 (n=2)" in plain_verdict["evidence"]
    assert "plain-20 (cifar_plain20) 10.50% ± 0.71 (n=2)" in plain_verdict["evidence"]
    assert "+10.50 points" in plain_verdict["evidence"]
    assert residual_verdict["finding"] == "the deeper residual net has the lower training error"
    assert residual_verdict["holds"] is True and "-3.00 points" in residual_verdict["evidence"]

    client = MlflowClient(store["uri"])
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED" and run.info.experiment_id == store["experiment"]
    assert run.data.tags["orch.kind"] == "report"
    assert set(run.data.tags["orch.report.runs"].split(",")) == set(plain + residual)
    assert "report/report.html" in {a.path for a in client.list_artifacts(out["run_id"], "report")}


def test_paper_numbers_compare_only_for_the_same_data_and_protocol(store):
    cifar = make_run(store, "c110", cifar_params("cifar_resnet110", 0, "/d/cifar10/train.beton"), ([9.0], [7.0], [1.0]))
    imagenet = make_run(
        store,
        "in34",
        cifar_params("resnet34", 0, "/d/imagenet/train.beton", 1000, **{"model.options.shortcut": "A"}),
        ([30.0], [27.0], [9.0]),
    )
    tencrop = make_run(
        store,
        "in50",
        cifar_params("resnet50", 0, "/d/imagenet/train.beton", 1000),
        ([25.0], [24.0], [7.0]),
        metrics={"eval_10crop_top1_error": 23.0, "eval_10crop_top5_error": 6.9},
    )
    fashion = make_run(store, "fm", cifar_params("cifar_resnet110", 0), ([9.0], [8.0], [1.0]))
    rows = {
        row["run_ids"][0]: row for row in build_rows(collect(store["uri"], [cifar, imagenet, tencrop, fashion]).trained)
    }

    table6 = compare(rows[cifar])
    assert table6["table"] == "Table 6" and table6["comparable"] is True and table6["paper_top1_error"] == 6.43
    assert table6["paper_mean_std"] == [6.61, 0.16, 5] and table6["difference"] == pytest.approx(7.0 - 6.43)
    table3 = compare(rows[imagenet])
    assert (table3["table"], table3["model"], table3["paper_top1_error"]) == ("Table 3", "ResNet-34 A", 25.03)
    assert table3["comparable"] is False and table3["reason"].startswith("not comparable: protocol")
    assert table3["ours_top1_error"] == 27.0
    evaluated = compare(rows[tencrop])
    assert (
        evaluated["comparable"] is True and evaluated["model"] == "ResNet-50" and evaluated["ours_top1_error"] == 23.0
    )
    assert compare(rows[fashion]) is None


def test_ensemble_verdict(store):
    members = [
        make_run(store, f"m{i}", cifar_params("cifar_resnet20", i), ([20.0], [err], [2.0]))
        for i, err in enumerate((9.0, 8.5))
    ]
    ensemble = make_run(
        store,
        "ens",
        {},
        tags={"orch.kind": "ensemble", "orch.ensemble.members": ",".join(members)},
        metrics={"top1_error": 7.25, "top5_error": 1.5, "member0_top1_error": 9.0, "member1_top1_error": 8.5},
    )
    collected = collect(store["uri"], members + [ensemble])
    (verdict,) = [v for v in verdicts(build_rows(collected.trained), collected.ensembles) if "ensemble" in v["finding"]]
    assert verdict["finding"] == "the ensemble beats its best member" and verdict["holds"] is True
    assert "7.25% vs best member member1 8.50% (-1.25 points, 2 members)" in verdict["evidence"]


def test_cli_prints_one_json_object(store, sweep, tmp_path, capsys):
    main(["report", sweep["parent"], "--output", "json", "--tracking-uri", store["uri"], "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    outcome = json.loads(printed)
    assert printed.count("\n") == 1 and set(outcome) == {"rows", "figures", "verdicts", "run_id", "html", "skipped"}
    assert outcome["run_id"] == sweep["parent"] and len(outcome["rows"]) == 2

    main(["report", sweep["parent"], "--tracking-uri", store["uri"], "--out", str(tmp_path)])
    text = capsys.readouterr().out
    assert "mean ± std (n)" in text and "best of N" in text and "skipped " + sweep["killed"] in text


def test_errors_are_one_line_and_exit_2(store, capsys):
    no_history = make_run(store, "bare", cifar_params("cifar_resnet20", 0))
    empty_sweep = make_run(store, "empty-sweep", {}, tags={"orch.kind": "sweep"})
    make_run(store, "dead", {}, status="FAILED", tags={"mlflow.parentRunId": empty_sweep})
    for ref, said in (
        ("0" * 32, "unknown run"),
        (empty_sweep, "has no FINISHED trial runs (1 FAILED)"),
        (no_history, "has no val_top1_error history"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["report", ref, "--tracking-uri", store["uri"]])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in err, err
        (line,) = err.strip().splitlines()
        assert line.startswith("orch: error: ") and said in line and ref in line, line


def test_summarize_uses_the_sample_std():
    assert summarize([1.0, 2.0, 4.0]) == {"mean": pytest.approx(7 / 3), "std": statistics.stdev([1, 2, 4]), "n": 3}
    assert summarize([5.0]) == {"mean": 5.0, "std": None, "n": 1}
    assert summarize([None]) == {"mean": None, "std": None, "n": 0}
    with pytest.raises(OrchError, match="no runs given"):
        collect("sqlite:///nowhere.db", " , ")
