"""bench/gpu.py on a machine like the GPU one: torch alone (no Ray, MLflow, FFCV, pydantic,
PyYAML or click). One subprocess, with those imports blocked and CUDA hidden, imports what
the bench needs and runs it: it must say there is no GPU, exit 0, and print no ratio."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCKED = ("ray", "mlflow", "ffcv", "pydantic", "yaml", "click")

SCRIPT = textwrap.dedent(
    f"""
    import importlib, importlib.abc, runpy, sys

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in {BLOCKED!r}:
                raise ImportError(f"{{name}} is not installed on the GPU machine")

    sys.meta_path.insert(0, Blocker())
    sys.path.insert(0, {str(ROOT)!r})
    for module in ("orchestrator.train.steps", "orchestrator.models", "data_pipeline.loaders"):
        importlib.import_module(module)
    print("imports: ok")
    runpy.run_path({str(ROOT / "bench" / "gpu.py")!r}, run_name="__main__")
    """
)


@pytest.fixture(scope="module")
def bench_without_gpu():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)


def test_bench_imports_with_torch_alone(bench_without_gpu):
    assert "imports: ok" in bench_without_gpu.stdout, bench_without_gpu.stderr


def test_bench_without_a_gpu_says_so_and_prints_no_ratio(bench_without_gpu):
    assert bench_without_gpu.returncode == 0, bench_without_gpu.stderr
    lines = bench_without_gpu.stdout.splitlines()
    assert lines[-1].startswith("no CUDA GPU")
    assert not any(line.startswith("ratio:") for line in lines)
