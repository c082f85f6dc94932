"""A real two-node Ray cluster and a real MLflow server on loopback, for the remote-target tests.

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
from pathlib import Path

import requests

BIN = Path(sys.executable).parent


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
        self.wait_for_nodes(1, timeout_s)
        for i in range(1, nodes):
            self._start_node(f"worker{i}", [f"--address=127.0.0.1:{self.gcs_port}"])
        self.wait_for_nodes(nodes, timeout_s)
        return self

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


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a sqlite store: a tracking URI every node reaches."""

    def __init__(self, root: Path):
        self.root = root
        self.uri = f"http://127.0.0.1:{free_port()}"
        self.proc = None

    def start(self, timeout_s: float = 90) -> "MlflowServer":
        return self.launch().wait_until_up(timeout_s)

    def launch(self) -> "MlflowServer":
        """Start the server process without waiting for it (it boots in seconds meanwhile)."""
        port = self.uri.rsplit(":", 1)[1]
        self.proc = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                port,
                "--workers",
                "1",
            ],
            stdout=open(self.root / "mlflow.log", "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # No job runner (MLflow's GenAI scoring jobs): its processes took ~10 s to stop.
            env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
        )
        return self

    def wait_until_up(self, timeout_s: float = 90) -> "MlflowServer":
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'mlflow.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{self.uri}/health", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"mlflow server not up after {timeout_s:.0f} s")

    def stop(self) -> None:
        """Its own process group (the server and its workers), nothing else."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
