"""What a researcher reads: the summary `orch submit` and `orch resume` print, the progress line
inside an epoch (orchestrator/console/terminal.py), and `orch ui`. No Ray and no training here; the
stage lines of a real `orch submit` are checked in tests/test_imagenet_path.py."""

import sys

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from orchestrator.console.progress import EpochPrinter, format_summary
from orchestrator.console.terminal import LiveLine, StepPoint, StepRate, format_progress, newest_point
from orchestrator.runs.outcome import JobOutcome

METRICS = {
    "epoch": 2,
    "best_val_top1_error": 8.7234,
    "val_top1_error": 8.9,
    "val_top5_error": 0.31,
    "train_loss": 0.25,
    "data_wait_fraction": 0.123,
    "epoch_seconds": 185.2,
    "train_images_per_second": 1234.5,
}


def _summary(uri: str) -> list[str]:
    outcome = JobOutcome("abc", "FINISHED", METRICS, "/ckpt/epoch_0002", uri, epochs=3)
    return format_summary(outcome).splitlines()


def test_the_summary_shows_errors_in_percent_the_epoch_as_counted_and_orch_ui(in_tmp, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = f"sqlite:///{in_tmp / 'mlflow.db'}"  # what `orch ui` opens in this directory
    lines = _summary(default)
    assert lines[:5] == [
        "run abc: FINISHED",
        "  epoch                    3/3",
        "  best_val_top1_error      8.72%",
        "  val_top1_error           8.90%",
        "  val_top5_error           0.31%",
    ]
    assert "  data_wait_fraction       12%" in lines and "  epoch_seconds            3m05s" in lines
    assert "  train_images_per_second  1,234 img/s" in lines and "  train_loss               0.25" in lines
    assert lines[-1] == "  dashboard                orch ui, then open http://127.0.0.1:5000"

    other = f"sqlite:///{in_tmp / 'elsewhere' / 'm.db'}"
    assert _summary(other)[-1].endswith(f"orch ui --tracking-uri {other}, then open http://127.0.0.1:5000")
    assert _summary("http://mlflow:5000")[-1] == "  dashboard                http://mlflow:5000"
    # After `make demo` orch is .venv/bin/orch, not on PATH: the line says how it was started.
    monkeypatch.setattr(sys, "argv", [".venv/bin/orch", "submit"])
    monkeypatch.setenv("PATH", "/nonexistent")
    assert _summary(default)[-1] == "  dashboard                .venv/bin/orch ui, then open http://127.0.0.1:5000"


def test_the_progress_line_says_where_the_epoch_is_and_how_long_it_has_left():
    point = StepPoint(step=619, loss=0.81234, images_per_second=2345.4, at=100.0)
    assert format_progress(point, 600, 3, steps_per_second=2.0) == (
        "epoch 2/3: step 20/600  loss 0.8123  2,345 img/s  ~4m50s left in the epoch"
    )
    first = StepPoint(step=0, loss=2.30259, images_per_second=None, at=10.0)
    assert format_progress(first, 600, 3, steps_per_second=None) == "epoch 1/3: step 1/600  loss 2.3026"

    latest = {
        "step/train_loss": (0.5, 40, 1_000_000),
        "step/images_per_second": (300.0, 40, 1_000_000),
        "lr": (0.1, 0, 1),
    }
    assert newest_point(latest) == StepPoint(40, 0.5, 300.0, 1000.0)
    assert newest_point({"train_loss": (0.5, 0, 1)}) is None  # a run without step metrics


def test_the_step_rate_is_measured_within_an_epoch():
    rate = StepRate()
    assert rate.update(StepPoint(0, 1.0, None, 0.0), 600) is None
    assert rate.update(StepPoint(10, 1.0, None, 5.0), 600) == 2.0
    assert rate.update(StepPoint(600, 1.0, None, 100.0), 600) == 2.0  # validation in between: not counted
    assert rate.update(StepPoint(620, 1.0, None, 105.0), 600) == 4.0


def test_off_a_terminal_the_progress_line_is_printed_at_most_every_30_s(capsys):
    now = [0.0]
    live = LiveLine(tty=False, clock=lambda: now[0])
    for at, text in ((0, "a"), (10, "b"), (29.9, "c"), (30, "d"), (45, "e"), (61, "f")):
        now[0] = at
        live.show(text)
    live.clear()  # nothing to take back
    assert capsys.readouterr().err == "a\nd\nf\n"


def test_on_a_terminal_the_progress_line_is_rewritten_in_place(capsys, monkeypatch):
    live = LiveLine(tty=True)
    live.show("epoch 1/3: step 10/600")
    live.show("epoch 1/3: step 9")
    live.clear()
    err = capsys.readouterr().err
    assert err == "\repoch 1/3: step 10/600" + "\repoch 1/3: step 9" + " " * 5 + "\r" + " " * 17 + "\r"
    monkeypatch.setattr("orchestrator.console.terminal._columns", lambda: 12)
    live.show("epoch 1/3: step 10/600")  # never wider than the terminal: a wrapped line cannot be rewritten
    assert capsys.readouterr().err == "\repoch 1/3: "


def test_the_printer_shows_the_newest_step_of_the_epoch_being_trained(mlflow_uri, capsys):
    """As rank 0 logs them: the tags orch.precision and orch.steps_per_epoch, then step/* points; each new point
    once, none of an epoch whose line is printed; an epoch's line once the controller has
    logged it in full (its tag orch.epoch)."""
    client = MlflowClient(mlflow_uri)
    run_id = client.create_run(client.create_experiment("steps")).info.run_id
    printer = EpochPrinter(mlflow_uri, run_id, epochs=2, err=True, live=LiveLine(tty=False, every=0))
    printer.flush()
    client.set_tag(run_id, "orch.precision", "fp32 (auto: CPU without native bf16)")  # rank 0 tags it first
    client.set_tag(run_id, "orch.steps_per_epoch", "10")
    client.log_batch(run_id, metrics=[Metric("step/train_loss", 1.5, 1_000, 0)])
    printer.flush()
    rate = Metric("step/images_per_second", 80.0, 6_000, 5)
    client.log_batch(run_id, metrics=[Metric("step/train_loss", 1.0, 6_000, 5), rate])
    printer.flush()
    printer.flush()
    epoch = {"train_loss": 1.1, "val_top1_error": 50.0, "val_top5_error": 5.0, "train_images_per_second": 80.0}
    client.log_batch(run_id, metrics=[Metric(k, v, 9_000, 0) for k, v in {**epoch, "epoch_seconds": 9.0}.items()])
    printer.flush()  # the epoch's metrics, not yet its orch.epoch tag (the controller sets it last)
    client.set_tag(run_id, "orch.epoch", "0")
    printer.flush()
    assert capsys.readouterr().err.splitlines() == [
        "orch: workers ready, 10 steps an epoch, precision fp32 (auto: CPU without native bf16): "
        "FFCV compiles its pipeline first",
        "epoch 1/2: step 1/10  loss 1.5000",
        "epoch 1/2: step 6/10  loss 1.0000  80 img/s  ~4s left in the epoch",  # 1 step/s, 4 steps left
        "epoch   1/2  loss 1.1000  top-1 err  50.00%  top-5 err   5.00%  80 img/s  9s/epoch  left ~9s",
    ]


def test_on_a_terminal_the_printer_says_what_it_waits_for_until_the_first_step(mlflow_uri, capsys):
    client = MlflowClient(mlflow_uri)
    run_id = client.create_run(client.create_experiment("wait")).info.run_id
    printer = EpochPrinter(mlflow_uri, run_id, epochs=2, err=False, live=LiveLine(tty=True))
    printer.flush()
    assert capsys.readouterr().err == "\rwaiting for the workers: 0s"
    client.set_tag(run_id, "orch.steps_per_epoch", "10")
    printer.flush()
    said = capsys.readouterr().err.split("\r")
    assert said[-2:] == ["orch: workers ready, 10 steps an epoch: FFCV compiles its pipeline first\n", said[-1]]
    assert said[-1].startswith("waiting for the first step (FFCV compiles its pipeline): 0s")
    client.log_batch(run_id, metrics=[Metric("step/train_loss", 1.5, 1_000, 0)])
    printer.flush()
    assert capsys.readouterr().err.startswith("\repoch 1/2: step 1/10  loss 1.5000")


def test_orch_ui_names_a_missing_store_and_orch_submit(tmp_path, capsys):
    from orchestrator.cli.main import main

    missing = tmp_path / "none.db"
    with pytest.raises(SystemExit) as exit_info:
        main(["ui", "--tracking-uri", f"sqlite:///{missing}"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and line.startswith("orch: error: ") and str(missing) in line, line
    assert "`orch submit" in line and not missing.exists()
