"""The tracking server a platform team deploys, started for real on loopback: PostgreSQL (Debian's
`postgresql` package, `initdb` and `pg_ctl` under a temporary folder) and `mlflow server` with
the command, arguments and settings k8s/mlflow.yaml gives it, read from that file.

Only what cannot be the same off Kubernetes changes: the server listens on 127.0.0.1 at a free
port instead of 0.0.0.0:5000, the database is this PostgreSQL instead of the Service
mlflow-postgres, and artifacts go to a local folder instead of the S3 bucket (still served by
the server, as there). One argument is added: `--workers 1` (the Deployment keeps MLflow's 4;
on 2 cores the other three cost ~25 s of CPU at each start). The server's PostgreSQL driver is
the one `orch[server]` installs, as in the image.
"""

import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

from remote_fixtures import free_port

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "k8s" / "mlflow.yaml"
BIN = Path(sys.executable).parent


class PostgresUnavailable(RuntimeError):
    """PostgreSQL is not installed, or did not start: the tests that need it fail with this."""


def postgres_bindir() -> Path:
    """Where initdb and pg_ctl are: on PATH, else Debian's /usr/lib/postgresql/VERSION/bin (the
    `postgresql` package puts only its client wrappers on PATH)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not versions:
        raise PostgresUnavailable("PostgreSQL is not installed: apt-get install -y postgresql (`make setup` does)")
    return versions[-1].parent


class Postgres:
    """A PostgreSQL server of its own on 127.0.0.1, with user and database `mlflow` and a password.
    initdb refuses to run as root, so as root it runs as the `postgres` user the package creates."""

    def __init__(self):
        self.bindir = postgres_bindir()
        self.run_as = "postgres" if os.geteuid() == 0 else None
        if self.run_as and self.run_as not in {entry.pw_name for entry in pwd.getpwall()}:
            raise PostgresUnavailable("the tests run as root, and there is no `postgres` user to run initdb as")
        self.root = Path(tempfile.mkdtemp(prefix="orch-pg-", dir="/tmp"))  # short: its socket lives here
        self.data = self.root / "data"
        self.port = free_port()
        self.user = self.database = "mlflow"
        self.password = secrets.token_hex(12)  # URL-safe, as k8s/secrets.example.yaml asks

    @property
    def uri(self) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> "Postgres":
        if self.run_as:
            shutil.chown(self.root, self.run_as)
        password_file = self.root / "password"
        password_file.write_text(self.password)
        if self.run_as:
            shutil.chown(password_file, self.run_as)
        # --no-sync and fsync off: a throwaway database, nothing has to survive a crash.
        self._run(
            "initdb", "-D", self.data, "-U", self.user, "--auth=scram-sha-256", f"--pwfile={password_file}", "--no-sync"
        )
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c synchronous_commit=off"
        self._run("pg_ctl", "-D", self.data, "-l", self.root / "postgres.log", "-w", "-o", options, "start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, self.database)
        return self

    def _run(self, tool: str, *args) -> None:
        env = dict(os.environ, PGPASSWORD=self.password, LC_ALL="C.UTF-8")
        done = subprocess.run(
            [str(self.bindir / tool), *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
            user=self.run_as,
            cwd=self.root,
            timeout=120,
        )
        if done.returncode != 0:
            log = self.root / "postgres.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise PostgresUnavailable(f"`{tool}` exited {done.returncode}: {(done.stdout + done.stderr)[-2000:]}{tail}")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
            except PostgresUnavailable:
                pass  # already gone
        shutil.rmtree(self.root, ignore_errors=True)


def k8s_server_container() -> tuple[dict, dict]:
    """The mlflow Deployment's container and the ConfigMap mlflow-config's data, from k8s/mlflow.yaml."""
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(MANIFEST.read_text())}
    (container,) = docs["Deployment", "mlflow"]["spec"]["template"]["spec"]["containers"]
    return container, docs["ConfigMap", "mlflow-config"]["data"]


def k8s_server_command(postgres: Postgres, port: int, artifacts: Path) -> tuple[list[str], dict]:
    """`mlflow server` as k8s/mlflow.yaml runs it, for this machine: (argv, the container's env)."""
    container, config = k8s_server_container()
    secret = {"POSTGRES_USER": postgres.user, "POSTGRES_PASSWORD": postgres.password, "POSTGRES_DB": postgres.database}
    env = {}
    for item in container["env"]:
        source = item.get("valueFrom", {})
        if "secretKeyRef" in source:
            value = secret.get(source["secretKeyRef"]["key"])  # the S3 keys: no bucket here
        else:
            value = config[source["configMapKeyRef"]["key"]] if source else item["value"]
        if value is not None:
            env[item["name"]] = value
    env["MLFLOW_ARTIFACTS_DESTINATION"] = str(artifacts)
    env.pop("MLFLOW_S3_ENDPOINT_URL", None)
    # Kubernetes expands $(VAR) in args from the container's env.
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg) for arg in container["args"]]
    for old, new in (
        ("--host=0.0.0.0", "--host=127.0.0.1"),
        ("--port=5000", f"--port={port}"),
        ("@mlflow-postgres:5432/", f"@127.0.0.1:{postgres.port}/"),
    ):
        changed = [arg.replace(old, new) for arg in args]
        assert changed != args, f"{MANIFEST}: no {old!r} in the mlflow container's args; update {__file__}"
        args = changed
    command = [str(BIN / container["command"][0]), *container["command"][1:]]
    return [*command, *args, "--workers", "1"], env


class MlflowServer:
    """`mlflow server` on `postgres`, as k8s/mlflow.yaml runs it; `uri` is what every node reaches.
    `stop()` then `launch()` restarts it on the same port and store (an outage)."""

    def __init__(self, root: Path, postgres: Postgres):
        self.root, self.postgres = root, postgres
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = root / "mlflow.log"
        self.proc = None

    def start(self, timeout_s: float = 120) -> "MlflowServer":
        return self.launch().wait_until_up(timeout_s)

    def launch(self) -> "MlflowServer":
        """Start the server process without waiting for it (it boots in seconds meanwhile)."""
        argv, env = k8s_server_command(self.postgres, self.port, self.root / "artifacts")
        self.proc = subprocess.Popen(
            argv,
            stdout=open(self.log, "a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # No job runner (MLflow's GenAI scoring jobs): its processes took ~10 s to stop.
            env=dict(os.environ, **env, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
        )
        return self

    def wait_until_up(self, timeout_s: float = 120) -> "MlflowServer":
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.uri}/health", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"mlflow server not up after {timeout_s:.0f} s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """Its own process group (the server and its workers), nothing else."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
