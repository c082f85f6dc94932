"""`orch report` on runs made by hand in a real MLflow store: a sweep of 2 architectures x 2
seeds (with a KILLED trial, one ASHA stopped and one resumed into a second run), runs on
CIFAR-10, ImageNet and Fashion-MNIST with the recipes of jobs/, an ensemble run. Every number
the report shows is computed again here from the values logged (scipy for the t-tests)."""

import json
import shutil
import statistics
from pathlib import Path

import pytest
from matplotlib.image import imread
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from scipy import stats

from orchestrator.cli.main import main
from orchestrator.errors import OrchError
from orchestrator.report import build_report, build_rows, collect, verdicts
from orchestrator.report.paper import compare
from orchestrator.report.table import summarize
from orchestrator.runs.tracking import _param_value
from orchestrator.spec import flatten, load_spec

JOBS = Path(__file__).resolve().parent.parent / "jobs"
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


def job_params(job: str, train: str, *sets: str) -> dict:
    """The params a run of jobs/JOB.yaml (with --set SETS) logs, as orchestrator.runs.tracking logs them."""
    spec = load_spec(JOBS / f"{job}.yaml", [f"data.train={train}", *sets])
    return {k: _param_value(v) for k, v in flatten(spec.model_dump(mode="json")).items()}


@pytest.fixture(scope="module")
def sweep(store) -> dict:
    """A FINISHED sweep parent and its trials: 4 FINISHED, a KILLED one, one ASHA stopped, and one
    resumed into a second run (the first, FAILED, superseded)."""
    parent = make_run(store, "sweep-degradation", {}, tags={"orch.kind": "sweep", "mlflow.note.content": "Sweep."})
    trials = {}
    for trial, ((arch, seed), curves) in enumerate(CURVES.items()):
        if trial == 3:  # its first run failed; the sweep resumed it into a second, which finished
            first = make_run(
                store, "trial-3", cifar_params(arch, seed), None, "FAILED", _trial_tags(parent, 3, arch, seed)
            )
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
    stopped = make_run(
        store,
        "trial-5",
        cifar_params("cifar_resnet20", 3),
        ([70.0], [71.0], [40.0]),
        tags={**_trial_tags(parent, 5, "cifar_resnet20", 3), "orch.sweep.early_stopped": "ASHA, after epoch 0"},
    )
    return {"parent": parent, "trials": trials, "killed": killed, "stopped": stopped, "superseded": first}


def _trial_tags(parent, trial, arch, seed) -> dict:
    overrides = json.dumps({"model.arch": arch, "training.seed": seed})
    return {"mlflow.parentRunId": parent, "orch.sweep.trial": str(trial), "orch.sweep.overrides": overrides}


def test_sweep_report_tabulates_final_errors_plots_and_logs_to_the_parent(store, sweep, tmp_path):
    out = build_report(store["uri"], sweep["parent"], tmp_path / "out")

    assert set(out) == {"rows", "figures", "verdicts", "run_id", "html", "skipped"}
    assert out["run_id"] == sweep["parent"]
    rows = {row["arch"]: row for row in out["rows"]}
    assert list(rows) == ["cifar_plain20", "cifar_resnet20"]  # plain first
    for arch, row in rows.items():
        train, val, val5 = zip(*(CURVES[arch, seed] for seed in (0, 1)))
        expect = {
            "final_val_top1_error": [v[-1] for v in val],
            "best_epoch_val_top1_error": [min(v) for v in val],
            "final_val_top5_error": [v[-1] for v in val5],
            "final_train_top1_error": [t[-1] for t in train],
        }
        assert row["n"] == 2 and row["dataset"] == "fashion-mnist" and row["config"] == {"model.arch": arch}
        assert row["run_ids"] == [sweep["trials"][arch, seed] for seed in (0, 1)]  # a trial counts once
        for key, values in expect.items():
            assert row[key]["mean"] == pytest.approx(statistics.mean(values)), key
            assert row[key]["std"] == pytest.approx(statistics.stdev(values)), key
            assert row[key]["n"] == 2 and row[key]["values"] == values
        assert "best_of_n_val_top1_error" not in row  # the paper gives no best of N here
        assert row["curves"]["val_top1_error"]["mean"] == pytest.approx([statistics.mean(e) for e in zip(*val)])
        assert row["paper"] is None  # Fashion-MNIST: the paper has no number
    assert rows["cifar_plain20"]["residual"] is False and rows["cifar_resnet20"]["shortcut"] == "A"
    assert "plain-20 (cifar_plain20; plain)" == rows["cifar_plain20"]["label"]
    skipped = {s["run_id"]: (s["status"], s["reason"]) for s in out["skipped"]}
    assert skipped == {
        sweep["superseded"]: (
            "FAILED",
            f"superseded by run {sweep['trials']['cifar_resnet20', 1]}, the newest run of trial 3",
        ),
        sweep["killed"]: ("KILLED", "not FINISHED"),
        sweep["stopped"]: ("FINISHED", "stopped early (ASHA, after epoch 0): a truncated run, not averaged"),
    }
    # residual against plain at 20 layers, the paper's shallow-depth finding: after epoch 1 of 3,
    # 44.50 vs 51.00 over 2 seeds each (Welch p = 0.06); at the end 19.00 vs 32.00 (p = 0.055)
    (verdict,) = out["verdicts"]
    early = stats.ttest_ind([45.0, 44.0], [50.0, 52.0], equal_var=False)
    end = stats.ttest_ind([20.0, 18.0], [30.0, 34.0], equal_var=False)
    assert verdict["finding"] == (
        "at the shallowest depth the plain and residual nets end at comparable training error, "
        "the residual net ahead early in training (20 layers)"
    )
    assert verdict["holds"] is None and verdict["verdict"] == "undecided" and early.pvalue >= 0.05
    assert verdict["test"]["p"] == pytest.approx(early.pvalue) and verdict["test"]["n"] == [2, 2]
    assert verdict["test"]["ci95"] == pytest.approx(list(early.confidence_interval(0.95)))
    assert verdict["test"]["difference"] == pytest.approx(-6.5)
    assert verdict["evidence"].startswith("the residual net is not shown ahead early; early, after epoch 1 of 3: ")
    assert "at the end: fashion-mnist: final train top-1 error ResNet-20" in verdict["evidence"]
    assert f"Welch's t-test p = {end.pvalue:.2g}" in verdict["evidence"]

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
    parent = client.get_run(sweep["parent"])
    assert parent.info.status == "FINISHED"
    # the result where the MLflow UI shows a run: its description and metrics the runs table sorts by
    note = parent.data.tags["mlflow.note.content"]
    assert (
        note.startswith("Sweep.\n\n#### Result\n\n| configuration |") and "UNDECIDED: at the shallowest depth" in note
    )
    assert "| plain-20 (cifar_plain20; plain) | fashion-mnist | 2 | 37.50 ± 2.12 (2) | - |" in note
    assert parent.data.metrics == {
        "final_val_top1_error/plain-20": 37.5,
        "final_val_top5_error/plain-20": 11.0,
        "final_train_top1_error/plain-20": 32.0,
        "final_val_top1_error/ResNet-20": 27.75,
        "final_val_top5_error/ResNet-20": 7.5,
        "final_train_top1_error/ResNet-20": 19.0,
        "best_trial/final_val_top1_error": 27.5,
        "best_trial/final_train_top1_error": 18.0,
    }
    assert parent.data.tags["orch.sweep.best_trial"].startswith(sweep["trials"]["cifar_resnet20", 1])
    build_report(store["uri"], sweep["parent"], tmp_path / "again")  # a later report replaces the result
    assert client.get_run(sweep["parent"]).data.tags["mlflow.note.content"].count("#### Result") == 1


def test_verdicts_are_welch_tests_on_the_seeds_final_training_errors(store, tmp_path):
    plain = [
        make_run(
            store, f"p{depth}-{seed}", cifar_params(f"cifar_plain{depth}", seed), ([50.0, err], [55.0, err], [5.0])
        )
        for depth, errs in ((20, (10.0, 11.0, 12.5)), (56, (20.0, 22.0, 21.0)))
        for seed, err in enumerate(errs)
    ]
    residual = [
        make_run(
            store, f"r{depth}", cifar_params(f"cifar_resnet{depth}", 0), ([30.0, err], [35.0, err + 4], [5.0, 3.0])
        )
        for depth, err in ((20, 9.0), (56, 6.0))
    ]
    out = build_report(store["uri"], ",".join(plain + residual), tmp_path / "list")

    deeper_plain, deeper_residual, residual20, residual56 = out["verdicts"]
    assert deeper_plain["finding"] == "the deeper plain net has the higher training error"
    test = stats.ttest_ind([20.0, 22.0, 21.0], [10.0, 11.0, 12.5], equal_var=False)
    assert deeper_plain["holds"] is True and deeper_plain["test"]["p"] == pytest.approx(test.pvalue)
    assert test.pvalue < 0.05
    assert deeper_plain["test"]["n"] == [3, 3] and deeper_plain["test"]["df"] == pytest.approx(test.df)
    low, high = test.confidence_interval(0.95)
    assert f"difference +9.83 points, 95% CI [{low:+.2f}, {high:+.2f}], Welch's t-test p = " in deeper_plain["evidence"]
    assert "plain-56 (cifar_plain56) 21.00% ± 1.00 (n=3)" in deeper_plain["evidence"]
    # one seed a side: no test, undecided, saying why
    assert deeper_residual["finding"] == "the deeper residual net has the lower training error"
    assert deeper_residual["holds"] is None and deeper_residual["test"] is None
    assert deeper_residual["evidence"].endswith(
        "difference -3.00 points; needs at least 2 seeds a side (ResNet-56 has 1, ResNet-20 has 1)"
    )
    assert residual20["finding"].startswith("at the shallowest depth the plain and residual nets end at comparable")
    assert residual56["finding"] == "the residual net has a lower training error than the plain net of its depth"
    assert residual20["holds"] is None and "(ResNet-20 has 1)" in residual20["evidence"]
    assert "ResNet-56 (cifar_resnet56) 6.00%" in residual56["evidence"] and residual56["holds"] is None

    client = MlflowClient(store["uri"])
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED" and run.info.experiment_id == store["experiment"]
    assert run.data.tags["orch.kind"] == "report"
    assert set(run.data.tags["orch.report.runs"].split(",")) == set(plain + residual)
    assert "report/report.html" in {a.path for a in client.list_artifacts(out["run_id"], "report")}


def test_the_papers_numbers_stand_beside_final_errors_of_the_papers_recipe(store):
    """Table 6: ResNet-110's best of 5 and mean ± std against ours, of the final errors (not the
    best epochs); a run off the paper's recipe, or on ImageNet at Goyal et al.'s batch, is not
    comparable, each reason named; single-crop ImageNet numbers are not comparable with 10-crop."""
    cifar10 = "/d/cifar10/train.beton"
    steps = {"orch.steps_per_epoch": "390"}  # 50,000 images // 128
    finals = [6.9, 6.5, 6.7]
    resnet110 = [
        make_run(
            store,
            f"c110-{seed}",
            job_params("cifar_resnet110", cifar10, f"training.seed={seed}"),
            ([1.0, 0.1], [5.0, final], [0.5, 0.2]),  # the best epoch (5.0) is not the final one
            tags=steps,
        )
        for seed, final in enumerate(finals)
    ]
    off_recipe = make_run(
        store,
        "c56-short",
        job_params("cifar_resnet56", cifar10, "training.epochs=100", "data.max_train_samples=45000"),
        ([9.0], [7.0], [1.0]),
        tags={"orch.steps_per_epoch": "351"},  # 45,000 images // 128
    )
    imagenet = make_run(
        store,
        "in50-large",
        job_params("resnet50_imagenet_large_batch", "/d/imagenet/train.beton"),
        ([25.0], [24.0], [7.0]),
        tags={"orch.steps_per_epoch": "625"},
        metrics={"eval_10crop_top1_error": 23.0, "eval_10crop_top5_error": 6.9},
    )
    single_crop = make_run(
        store,
        "in34",
        job_params("resnet34_imagenet", "/d/imagenet/train.beton"),
        ([30.0], [27.0], [9.0]),
        tags={"orch.steps_per_epoch": "5004"},
    )
    fashion = make_run(store, "fm", cifar_params("cifar_resnet110", 0), ([9.0], [8.0], [1.0]))
    runs = collect(store["uri"], [*resnet110, off_recipe, imagenet, single_crop, fashion]).trained
    rows = {row["run_ids"][0]: row for row in build_rows(runs)}

    table6 = compare(rows[resnet110[0]])
    assert (table6["table"], table6["paper_top1_error"], table6["paper_mean_std"]) == ("Table 6", 6.43, [6.61, 0.16, 5])
    assert table6["comparable"] is True, table6["reason"]
    assert table6["ours"] == {"mean": pytest.approx(6.7), "std": pytest.approx(statistics.stdev(finals)), "n": 3}
    assert table6["ours_best_of_n"] == {"value": 6.5, "run_id": resnet110[1], "n": 3}
    assert table6["difference"] == pytest.approx(6.7 - 6.61) and table6["best_of_n_difference"] == pytest.approx(0.07)
    assert rows[resnet110[0]]["best_epoch_val_top1_error"]["mean"] == 5.0  # shown apart, never compared
    short = compare(rows[off_recipe])
    assert short["statistic"] == "one run" and short["comparable"] is False and short["ours_best_of_n"] is None
    assert short["reason"] == (
        "not comparable: recipe (35,100 iterations vs 64,000, lr divided at iterations 28,782 and 43,173 vs "
        "32,000 and 48,000, 45,000 training images vs 50,000)"
    )
    large = compare(rows[imagenet])
    assert large["table"] == "Table 3" and large["model"] == "ResNet-50" and large["ours"]["mean"] == 23.0
    assert large["reason"].startswith(
        "not comparable: recipe (global batch 2048 vs 256, lr 0.8 vs 0.1, 75,000 iterations vs 600,000, "
        "warm-up linear 0.1 x lr for 3,125 iterations vs none)"
    )
    table3 = compare(rows[single_crop])
    assert (table3["table"], table3["model"], table3["paper_top1_error"]) == ("Table 3", "ResNet-34 A", 25.03)
    assert table3["reason"] == "not comparable: protocol (single-crop vs 10-crop; run `orch evaluate --tta 10crop`)"
    assert table3["ours"]["mean"] == 27.0
    assert compare(rows[fashion]) is None


def test_verdicts_claim_what_the_paper_claims(store, tmp_path):
    """Runs of 4 epochs of 480 steps of 128 (3% of the paper's 64,000 CIFAR iterations): at 20
    layers equal final errors with the residual net ahead after epoch 1 get the paper's shallow
    verdict; the deeper ResNet, a claim about converged nets, is not testable there and is
    judged once the runs are long enough; the 56-layer plain/residual gap and the deeper plain
    net are judged at any length."""
    finals = {
        "cifar_plain20": (60.0, [20.0, 20.5, 19.5]),
        "cifar_resnet20": (50.0, [20.2, 19.8, 20.0]),
        "cifar_plain56": (80.0, [60.0, 62.0, 61.0]),
        "cifar_resnet56": (70.0, [30.0, 31.0, 29.0]),
    }
    runs = [
        make_run(
            store,
            f"{arch}-{seed}",
            cifar_params(arch, seed, **{"training.epochs": 4, "training.batch_size": 128}),
            ([first + seed, first - 10, (first + end) / 2, end], [first, first, end, end], [5.0] * 4),
            tags={"orch.steps_per_epoch": "480"},
        )
        for arch, (first, ends) in finals.items()
        for seed, end in enumerate(ends)
    ]
    out = build_report(store["uri"], ",".join(runs), tmp_path / "paper-claims")
    found = {v["finding"].split(" (")[0]: v for v in out["verdicts"]}
    shallow = found[
        "at the shallowest depth the plain and residual nets end at comparable training error, "
        "the residual net ahead early in training"
    ]
    assert shallow["holds"] is True and shallow["verdict"] == "holds"
    early = stats.ttest_ind([50.0, 51.0, 52.0], [60.0, 61.0, 62.0], equal_var=False)
    assert shallow["test"]["p"] == pytest.approx(early.pvalue) and early.pvalue < 0.05
    assert shallow["evidence"].startswith("comparable at the end (within 2.00 points); early, after epoch 1 of 4: ")
    deeper_resnet = found["the deeper residual net has the lower training error"]
    assert deeper_resnet["holds"] is None and deeper_resnet["verdict"] == "not testable"
    assert deeper_resnet["evidence"].startswith(
        "not testable at 3% of the paper's iterations (1,920 steps of 128 against the paper's 64,000 of 128)"
    )
    assert found["the deeper plain net has the higher training error"]["verdict"] == "holds"
    residual56 = found["the residual net has a lower training error than the plain net of its depth"]
    assert residual56["verdict"] == "holds" and "ResNet-56" in residual56["evidence"]
    text = (tmp_path / "paper-claims" / "report.txt").read_text()
    assert "NOT TESTABLE: the deeper residual net has the lower training error (not testable at 3%" in text
    assert '<b class="untestable">not testable</b>' in Path(out["html"]).read_text()

    rows = build_rows(collect(store["uri"], runs).trained)
    by_arch = {row["arch"]: row for row in rows}
    for row in rows:  # the same errors from runs of 40,000 steps: the convergence claims are judged
        row["recipe"] = dict(row["recipe"], iterations=40_000)
    judged = {v["finding"].split(" (")[0]: v for v in verdicts(rows, [])}
    assert judged["the deeper residual net has the lower training error"]["verdict"] == "does not hold"
    # a residual net still well ahead at the end of a short run: not testable whether they end comparable
    by_arch["cifar_resnet20"]["final_train_top1_error"] = summarize([10.0, 10.5, 9.5])
    for row in rows:
        row["recipe"] = dict(row["recipe"], iterations=1_920)
    (still_ahead,) = [v for v in verdicts(rows, []) if v["finding"].startswith("at the shallowest depth")]
    assert still_ahead["verdict"] == "not testable" and still_ahead["holds"] is None
    assert still_ahead["evidence"].startswith("the residual net is still ahead at the end, 3% of the paper's")
    for row in rows:
        row["recipe"] = dict(row["recipe"], iterations=40_000)
    (not_comparable,) = [v for v in verdicts(rows, []) if v["finding"].startswith("at the shallowest depth")]
    assert not_comparable["verdict"] == "does not hold"


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
    assert "mean ± std (n)" in text and "epoch chosen on this set" in text and "skipped " + sweep["killed"] in text
    assert "UNDECIDED: at the shallowest depth the plain and residual nets end at comparable" in text


def test_errors_are_one_line_and_exit_2(store, capsys):
    no_history = make_run(store, "bare", cifar_params("cifar_resnet20", 0))
    empty_sweep = make_run(store, "empty-sweep", {}, tags={"orch.kind": "sweep"})
    make_run(store, "dead", {}, status="FAILED", tags={"mlflow.parentRunId": empty_sweep, "orch.sweep.trial": "0"})
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
    assert summarize([1.0, 2.0, 4.0]) == {
        "mean": pytest.approx(7 / 3),
        "std": statistics.stdev([1, 2, 4]),
        "n": 3,
        "values": [1.0, 2.0, 4.0],
    }
    assert summarize([5.0]) == {"mean": 5.0, "std": None, "n": 1, "values": [5.0]}
    assert summarize([None]) == {"mean": None, "std": None, "n": 0, "values": []}
    with pytest.raises(OrchError, match="no runs given"):
        collect("sqlite:///nowhere.db", " , ")
