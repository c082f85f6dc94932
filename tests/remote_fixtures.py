"""A real two-node Ray cluster on loopback for the remote-target tests, and `orch` run in
subprocesses against it (the tracking server they log to is tests/server_fixtures.py's).

Both nodes run on this machine (`ray start --head`, then `ray start --address`), each with its
own --temp-dir, so that neither an embedded `ray.init()` of another test module nor a user's
`ray` finds them. Each node is a `ray start --block` process: SIGTERM to it stops that node's
processes and nothing else (`ray stop` would stop every Ray on the machine).
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from mlflow.tracking import MlflowClient

BIN = Path(sys.executable).parent
RAY_JOB_ENDED = ("SUCCEEDED", "FAILED", "STOPPED")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def auth_headers() -> dict:
    """The token the cluster checks (Ray 2.60 turns token auth on when one is at hand)."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if not token and path.is_file():
        token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


class RayNodes:
    """`ray start` a head and workers on 127.0.0.1; `dashboard` is the Jobs API URL."""

    def __init__(self, cpus_per_node: int = 1):
        self.cpus = cpus_per_node
        self.root = Path(tempfile.mkdtemp(prefix="orch-ray-", dir="/tmp"))  # short: socket paths
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        # RAY_AUTH_MODE: a joining node needs it (platform notes); no drain: a test stops at once.
        self.env = dict(os.environ, RAY_AUTH_MODE="token", RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
        self.env.pop("RAY_ADDRESS", None)
        self.procs: list[subprocess.Popen] = []
        self.names: list[str] = []  # the node each of procs runs: "head", "worker1", ...
        self.stopped: set[str] = set()  # nodes a test took away

    def start(self, nodes: int = 2, timeout_s: float = 120) -> "RayNodes":
        self.start_head()
        self.wait_for_nodes(1, timeout_s)
        for i in range(1, nodes):
            self._start_node(f"worker{i}", [f"--address=127.0.0.1:{self.gcs_port}"])
        self.wait_for_nodes(nodes, timeout_s)
        return self

    def start_head(self) -> None:
        """`ray start --head`, without waiting for anything."""
        self._start_node(
            "head",
            [
                "--head",
                f"--port={self.gcs_port}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={free_port()}",
            ],
        )

    def wait_for_dashboard(self, timeout_s: float = 120, every_s: float = 0.1) -> float:
        """Poll the head's /api/version until it answers 200: the moment a user sees the
        dashboard up. Returns when that was (time.monotonic())."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.procs[0].poll() is not None:
                raise RuntimeError(f"`ray start --head` exited {self.procs[0].returncode}: {self.logs()}")
            try:
                if requests.get(f"{self.dashboard}/api/version", headers=auth_headers(), timeout=2).ok:
                    return time.monotonic()
            except requests.RequestException:
                pass
            time.sleep(every_s)
        raise TimeoutError(f"the dashboard at {self.dashboard} did not answer within {timeout_s:.0f} s: {self.logs()}")

    def _start_node(self, name: str, args: list[str]) -> None:
        temp = self.root / name
        temp.mkdir()
        log = open(self.root / f"{name}.log", "w")
        self.names.append(name)
        self.procs.append(
            subprocess.Popen(
                [
                    str(BIN / "ray"),
                    "start",
                    "--block",
                    *args,
                    f"--num-cpus={self.cpus}",
                    "--num-gpus=0",
                    "--node-ip-address=127.0.0.1",
                    f"--temp-dir={temp}",
                    f"--dashboard-agent-listen-port={free_port()}",
                    "--disable-usage-stats",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.root,
            )
        )

    def stop_node(self, name: str, timeout_s: float = 60) -> None:
        """SIGTERM the `ray start --block` of node `name` ("worker1", ...): that node goes away."""
        proc = self.procs[self.names.index(name)]
        self.stopped.add(name)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout_s)

    def add_node(self, name: str, timeout_s: float = 120) -> str:
        """A new worker node `name` joins the cluster (a replacement for a node that went away);
        returns its node id."""
        before = {n["node_id"] for n in self.alive_nodes()}
        self._start_node(name, [f"--address=127.0.0.1:{self.gcs_port}"])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            new = {n["node_id"] for n in self.alive_nodes()} - before
            if new:
                return new.pop()
            time.sleep(1)
        raise TimeoutError(f"node {name} not alive after {timeout_s:.0f} s: {self.logs()}")

    def job_status(self, job_id: str) -> str:
        """A Ray job's status from the Jobs API (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
        reply = requests.get(f"{self.dashboard}/api/jobs/{job_id}", headers=auth_headers(), timeout=10)
        reply.raise_for_status()
        return reply.json()["status"]

    def job_ids(self) -> set[str]:
        """The submission ids of every Ray job the cluster has been given."""
        reply = requests.get(f"{self.dashboard}/api/jobs/", headers=auth_headers(), timeout=10)
        reply.raise_for_status()
        return {job["submission_id"] for job in reply.json() if job.get("submission_id")}

    def alive_nodes(self) -> list[dict]:
        reply = requests.get(f"{self.dashboard}/api/v0/nodes", headers=auth_headers(), timeout=10)
        reply.raise_for_status()
        return [n for n in reply.json()["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def wait_for_nodes(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, proc in zip(self.names, self.procs):
                if proc.poll() is not None and name not in self.stopped:
                    raise RuntimeError(f"`ray start` exited {proc.returncode}: {self.logs()}")
            try:
                if len(self.alive_nodes()) >= count:
                    return
            except (requests.RequestException, KeyError, ValueError):
                pass
            time.sleep(1)
        raise TimeoutError(f"{count} Ray nodes not alive after {timeout_s:.0f} s: {self.logs()}")

    def logs(self) -> str:
        return "\n".join(p.read_text()[-2000:] for p in sorted(self.root.glob("*.log")))

    def stop(self, timeout_s: float = 60) -> None:
        """SIGTERM each `ray start --block` (workers first): it stops its own node's processes."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def orch(*args, uri: str, cwd, timeout=600, **env_vars) -> subprocess.CompletedProcess:
    """The CLI as a user runs it: no RAY_ADDRESS, no RAY_AUTH_MODE (orch finds the token)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "ORCH_TEST_FAULT")}
    env.update(env_vars, MLFLOW_TRACKING_URI=uri)
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


def job_sets(data, tmp, *extra) -> list[str]:
    sets = [
        f"data.train={data / 'train.beton'}",
        f"data.val={data / 'val.beton'}",
        "data.max_train_samples=1000",
        "training.epochs=1",
        "training.batch_size=100",
        "schedule.warmup_epochs=0",
        "model.arch=cifar_resnet8",
        "scaling.num_workers=2",
        "scaling.cpus_per_worker=1",
        "scaling.placement=SPREAD",
        f"checkpoint.storage={tmp / 'ckpt'}",
        "checkpoint.shared=true",
        "tracking.log_model=false",  # seconds per run; tests/test_dashboard.py checks the logged model
        *extra,
    ]
    return [arg for s in sets for arg in ("--set", s)]


def all_runs(uri: str) -> list:
    client = MlflowClient(uri)
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("orch: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def orch_in_parallel(*commands: tuple, uri: str, cwd) -> list[subprocess.CompletedProcess]:
    """Independent `orch` commands at once: each is mostly its ~5 s of imports, one core each."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: orch(*args, uri=uri, cwd=cwd), commands))


def wait_until(condition, what: str, timeout_s: float = 300, every_s: float = 0.5):
    """condition()'s first truthy value, polled; AssertionError naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s")


def ended_runs(uri: str, run_ids: list[str], nodes: RayNodes, timeout_s: float = 600) -> list:
    """The runs once their detached Ray jobs have ended (a run is FINISHED before its driver has
    logged its model and result) and none is RUNNING."""
    client = MlflowClient(uri)

    def ended():
        runs = [client.get_run(run_id) for run_id in run_ids]
        jobs = [nodes.job_status(r.data.tags["orch.ray_job_id"]) for r in runs]
        done = all(r.info.status != "RUNNING" for r in runs) and all(j in RAY_JOB_ENDED for j in jobs)
        return runs if done else None

    return wait_until(ended, f"runs {run_ids} and their Ray jobs ended", timeout_s, every_s=1)
