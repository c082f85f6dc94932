"""`orch submit SPEC --address http://HEAD:8265`: train on a Ray cluster through its Jobs API.

The submitter checks what it can before anything exists (the spec, the cluster's resources,
multi-node storage), then creates the MLflow run and submits a Ray job whose entrypoint
(orchestrator.targets.entrypoint) runs the same trainer as a local run for that run; the
run's life on this side is targets.remote_run. The project's source tree travels as the
job's working_dir and the resolved spec in its env_vars.

Data paths are read on the cluster: relative ones were made absolute in the directory `orch`
runs in, so give paths every node sees (a shared filesystem, the same layout on each node).
"""

import base64
import ipaddress
import json
import os
import shlex
import sys
import urllib.parse
from pathlib import Path

from orchestrator import cluster, preflight
from orchestrator.spec.schema import JobSpec
from orchestrator.targets import ray_jobs

# Left out of the uploaded working_dir (Ray also skips what .gitignore lists): data, outputs,
# envs. No trailing slashes: Ray tests each folder itself against these, and "dir/" matches only
# what is inside, so Ray would still walk every file of a virtualenv to leave them out one by one.
EXCLUDES = ["/.git", ".venv", "venv", "__pycache__", "/data", "/checkpoints", "/mlruns", "/mlartifacts",
            "*.db", "*.beton", "*.egg-info", ".pytest_cache"]
STOP_WAIT_S = 60  # how long Ray lets the entrypoint end the run KILLED after `ray job stop`


def submit_remote(spec: JobSpec, spec_path: str | None, *, address: str, detach: bool = False,
                  progress_to_stderr: bool = False) -> dict:
    """Submit `spec` to the Ray cluster whose Jobs API is at `address`; unless `detach`, print its
    epochs and return its outcome once the job ends: {run_id, status, metrics, best_checkpoint}.

    MLflow and Ray Train are imported only once the checks pass, so that a job the cluster
    cannot run is refused in the time it takes to ask the cluster.
    """
    preflight.plan(spec, require_data=False)  # the data is read on the cluster
    address = ray_jobs.connect(address)
    nodes = ray_jobs.alive_nodes(address)
    cluster.check_resources(spec.scaling, nodes, where=f"the Ray cluster at {address}")
    from orchestrator.targets import remote_run
    from orchestrator.tracking import tracking_uri

    uri = tracking_uri(spec)
    preflight.check_multi_node(spec, uri, len(nodes))
    jobs = ray_jobs.client(address)
    run_id = remote_run.start(spec, spec_path, uri, address)
    job_id = remote_run.submit(jobs, spec, uri, run_id, entrypoint_command(run_id, uri, address),
                               runtime_env(spec, uri))
    if detach:
        return remote_run.detached(jobs, job_id, uri, run_id)
    return remote_run.follow(jobs, job_id, spec, uri, run_id, progress_to_stderr, stop_wait_s=STOP_WAIT_S)


def entrypoint_command(run_id: str, uri: str, address: str) -> str:
    return shlex.join([cluster_python(address), "-m", "orchestrator.targets.entrypoint",
                       "--run-id", run_id, "--tracking-uri", uri])


def cluster_python(address: str) -> str:
    """$ORCH_RAY_PYTHON, else for a head on this machine (a loopback address) this interpreter,
    whose environment has orch's dependencies whatever PATH the head was started with, else
    `python` from the head's PATH (the cluster's image)."""
    if os.environ.get("ORCH_RAY_PYTHON"):
        return os.environ["ORCH_RAY_PYTHON"]
    host = urllib.parse.urlsplit(address).hostname or ""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    return sys.executable if local else "python"


def runtime_env(spec: JobSpec, uri: str) -> dict:
    """The job's runtime environment: the source tree as working_dir (when orch runs from one;
    else the cluster's installed orch is used), the spec and the MLflow store as env_vars."""
    env_vars = {
        "ORCH_SPEC_B64": encode_spec(spec),
        "MLFLOW_TRACKING_URI": uri,
        "PYTHONUNBUFFERED": "1",  # epoch lines reach the job's log as they are printed
        "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S),  # Ray's default, 3 s, is too short to end the run
    }
    root = project_root()
    return {"working_dir": str(root), "excludes": EXCLUDES, "env_vars": env_vars} if root else {"env_vars": env_vars}


def project_root() -> Path | None:
    """The source tree orch runs from (it has pyproject.toml beside the package), if any."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "orchestrator").is_dir() else None


def encode_spec(spec: JobSpec) -> str:
    return base64.b64encode(json.dumps(spec.model_dump(mode="json")).encode()).decode()
