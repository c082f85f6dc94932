"""Bad input to `orch submit`: one line naming the problem, exit code 2, no traceback, and no
MLflow run left behind. The CLI runs in this process (on the session's Ray), and once as a real
subprocess."""

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from eval_fixtures import run_orch

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "jobs" / "demo_fashion_mnist.yaml"


def orch(*args, cwd, env_uri):
    env = {"MLFLOW_TRACKING_URI": env_uri, "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )


def data_sets(data):
    return ["--set", f"data.train={data / 'train.beton'}", "--set", f"data.val={data / 'val.beton'}"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--set", "training.epochz=2"], "training.epochz: unknown key"),
        (["--set", "model.arch=resnet19"], "resnet19"),
        (["--set", "data.train=/nonexistent/train.beton"], "/nonexistent"),
        (["--set", "scaling.use_gpu=true"], "GPU"),
        (["--set", "training.batch_size=100000"], "training.batch_size"),
        (["--set", "training.max_preemption_failures=-2"], "training.max_preemption_failures"),
        (["--set", "training.termination_grace_s=0"], "training.termination_grace_s"),
        (["--set", "training.notice_every_n_steps=0"], "training.notice_every_n_steps"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, fragment, ray_cluster, small_fashion, mlflow_uri, in_tmp):
    code, _, err = run_orch("submit", DEMO, *data_sets(small_fashion), *args)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("orch: error:")]
    assert len(lines) == 1 and fragment in lines[0], err
    assert "Traceback" not in err
    client = MlflowClient(mlflow_uri)
    assert not [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_not_a_beton(tmp_path):
    fake = tmp_path / "train.beton"
    fake.write_text("not a beton")
    proc = orch(
        "submit",
        str(DEMO),
        "--set",
        f"data.train={fake}",
        "--set",
        f"data.val={fake}",
        cwd=tmp_path,
        env_uri=f"sqlite:///{tmp_path / 'm.db'}",
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(tmp_path) in proc.stderr


@pytest.mark.parametrize("job", sorted(p.name for p in (ROOT / "jobs").glob("*.yaml")))
def test_every_job_passes_dry_run(job, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from orchestrator.cli.main import _attach_commands, cli

    monkeypatch.chdir(tmp_path)
    _attach_commands()
    result = CliRunner().invoke(cli, ["submit", str(ROOT / "jobs" / job), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "global_batch" in result.output and "effective_lr" in result.output
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_dry_run_with_data_shows_the_plan(fashion_mnist, in_tmp, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///u.db")
    code, out, err = run_orch(
        "submit",
        DEMO,
        *data_sets(fashion_mnist),
        "--set",
        "scaling.num_workers=3",
        "--set",
        "scaling.cpus_per_worker=0.5",
        "--dry-run",
    )
    assert code == 0, err
    assert "val_shard_sizes: [3334, 3333, 3333]" in out
    assert "steps_per_epoch: 156" in out  # 60,000 / 3 workers / 128
    assert not (in_tmp / "u.db").exists()


def test_the_file_the_spec_names_is_named_before_its_dataset_json(tmp_path):
    """No dataset.json beside a file that is not a .beton: the error is about the file."""
    from orchestrator.errors import DataError
    from orchestrator.spec import load_spec
    from orchestrator.spec.preflight import plan

    fake = tmp_path / "train.beton"
    fake.write_text("not a beton")
    spec = load_spec(DEMO, [f"data.train={fake}", f"data.val={fake}"])
    with pytest.raises(DataError, match=f"^{fake}: not an FFCV .beton file"):
        plan(spec)
