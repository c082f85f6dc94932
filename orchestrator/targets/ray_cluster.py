"""A remote Ray cluster, reached through its Jobs API (the dashboard on its head, http://HEAD:8265):
`orch submit --address`, the job `orch resume` submits for a run that ran there, and the
lifecycle of the Ray job a run was submitted as.

The submitter checks what it can before anything exists (the spec, the cluster's resources,
multi-node storage), then creates the MLflow run and submits a Ray job whose entrypoint
(orchestrator.targets.entrypoint) runs the same trainer as a local run for that run. The
project's source tree travels as the job's working_dir and the resolved spec in its env_vars.
Data paths are read on the cluster: relative ones were made absolute in the directory `orch`
runs in, so give paths every node sees (a shared filesystem, the same layout on each node).

The address a user gives is the one used (Ray's JobSubmissionClient lets $RAY_ADDRESS override
its argument), and orch's own requests to the dashboard have a timeout, so a wrong address fails
in seconds instead of hanging or reaching another cluster. Every request to the cluster goes
through targets/retry.py's call(), which retries the answers that mean "not yet" (a head still
starting) for a bounded time; a job's submit is retried only after asking Ray whether the last
try went through (submit_once), so a Ray job is never submitted twice.
"""

import asyncio
import contextlib
import ipaddress
import logging
import os
import sys
import time
import urllib.parse
from pathlib import Path

import click
import requests

from orchestrator import ray_internals
from orchestrator.errors import JobFailed, JobInterrupted, OrchError, last_line
from orchestrator.spec import preflight
from orchestrator.spec.schema import JobSpec
from orchestrator.tags import CHECKPOINT_DIR_TAG, ERROR_TAG, RAY_ADDRESS_TAG, RAY_JOB_ID_TAG, TARGET_TAG
from orchestrator.targets import cluster, naming, retry

TIMEOUT_S = (3.0, 30.0)  # connect, read
STOP_WAIT_S = 60  # how long Ray lets the entrypoint end the run KILLED after `ray job stop`
# Left out of the uploaded working_dir (Ray also skips what .gitignore lists): data, outputs,
# envs, tests. No trailing slashes: Ray tests each folder itself against these, and "dir/"
# matches only what is inside, so Ray would still walk every file of a virtualenv.
EXCLUDES = [
    "/.git",
    ".venv",
    "venv",
    "__pycache__",
    "/data",
    "/checkpoints",
    "/mlruns",
    "/mlartifacts",
    "*.db",
    "*.beton",
    "*.egg-info",
    ".pytest_cache",
    "/tests",
    "/bench",
]
_ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


# --- submitting a job ------------------------------------------------------------------------


def submit_remote(
    spec: JobSpec, spec_path: str | None, *, address: str, detach: bool = False, progress_to_stderr: bool = False
):
    """Submit `spec` to the Ray cluster whose Jobs API is at `address`; unless `detach`, print its
    epochs and return its JobOutcome once the job ends.

    MLflow and Ray Train are imported only once the checks pass, so that a job the cluster
    cannot run is refused in the time it takes to ask the cluster.
    """
    address, uri = check_cluster(spec, address)
    from orchestrator.runs import tracking

    jobs = client(address)
    run_id = tracking.start_run(spec, spec_path, uri)
    tracking.set_tags(
        uri,
        run_id,
        {TARGET_TAG: "ray", RAY_ADDRESS_TAG: address, CHECKPOINT_DIR_TAG: naming.checkpoint_dir(spec, run_id)},
    )
    job_id = submit_job(jobs, spec, uri, run_id, address)
    return settle(jobs, job_id, spec, uri, run_id, detach=detach, progress_to_stderr=progress_to_stderr)


def check_cluster(spec: JobSpec, address: str, uri: str | None = None) -> tuple[str, str]:
    """What is checked before anything exists on the cluster at `address`: the spec (its data is
    read on the cluster), that the head answers, its alive nodes' resources, and that MLflow and
    the checkpoints are shared when it has several nodes. Returns the address as used and the
    MLflow store (`uri`, else the spec's)."""
    preflight.plan(spec, require_data=False)  # the data is read on the cluster
    address = connect(address)
    nodes = alive_nodes(address)
    cluster.check_resources(spec.scaling, nodes, where=f"the Ray cluster at {address}")
    from orchestrator.runs import tracking

    uri = uri or tracking.tracking_uri(spec)
    preflight.check_multi_node(spec, uri, len(nodes))
    return address, uri


def job_tags(address: str, job_id: str) -> dict:
    """The run's tags that name its Ray job, which `orch status/logs/stop` follow."""
    return {TARGET_TAG: "ray", RAY_ADDRESS_TAG: address, RAY_JOB_ID_TAG: job_id}


def entrypoint_command(run_id: str, uri: str, address: str, resume: bool = False) -> str:
    """The job's driver command, with the Python the cluster at `address` runs (cluster_python)."""
    return naming.train_command(run_id, uri, python=cluster_python(address), resume=resume)


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
    from orchestrator.train.faults import FAULT_VARIABLE

    env_vars = {
        "ORCH_SPEC_B64": naming.encoded_spec(spec),
        "MLFLOW_TRACKING_URI": uri,
        "PYTHONUNBUFFERED": "1",  # epoch lines reach the job's log as they are printed
        "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S),  # Ray's default, 3 s, is too short to end the run
    }
    if os.environ.get(FAULT_VARIABLE):  # the tests' fault hook reaches the job's driver
        env_vars[FAULT_VARIABLE] = os.environ[FAULT_VARIABLE]
    root = project_root()
    return {"working_dir": str(root), "excludes": EXCLUDES, "env_vars": env_vars} if root else {"env_vars": env_vars}


def project_root() -> Path | None:
    """The source tree orch runs from (it has pyproject.toml beside the package), if any."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "orchestrator").is_dir() else None


def submit_job(jobs, spec: JobSpec, uri: str, run_id: str, address: str, resume: int = 0) -> str:
    """Submit the run's job (Ray uploads the working_dir) and tag its id: the run's first job, or
    with `resume` = N its Nth resume, whose entrypoint continues the run from its checkpoint. The
    run ends FAILED (KILLED on Ctrl-C) if that does not happen."""
    from orchestrator.runs import tracking

    job_id = naming.ray_job_id(spec, run_id, resume)
    try:
        submit_once(
            jobs,
            job_id,
            entrypoint=entrypoint_command(run_id, uri, address, resume=bool(resume)),
            runtime_env=runtime_env(spec, uri),
            metadata=naming.job_metadata(run_id),
        )
        tracking.set_tags(uri, run_id, {RAY_JOB_ID_TAG: job_id})
    except KeyboardInterrupt:
        tracking.end_run(uri, run_id, "KILLED", "interrupted while submitting the Ray job")
        raise JobInterrupted(f"run {run_id} interrupted while submitting: marked KILLED") from None
    except Exception as exc:
        tracking.end_run(uri, run_id, "FAILED", f"submitting the Ray job failed: {exc}")
        raise JobFailed(
            f"run {run_id} FAILED: the Ray Jobs API at {jobs.get_address()} did not take the job: "
            f"{last_line(str(exc), 'no cause recorded')}"
        ) from None
    click.echo(
        f"run {run_id}: Ray job {job_id} on {jobs.get_address()} (`orch logs {run_id}` shows its output)", err=True
    )
    return job_id


def submit_once(jobs, job_id: str, **request) -> None:
    """Submit Ray job `job_id` (its submission id, which names its run) through retry.call, and
    never twice: before each retry, ask Ray for `job_id`; if Ray has it, the last try went
    through and only its answer was lost, so that job is the run's."""
    tries = 0

    def attempt() -> None:
        nonlocal tries
        tries += 1
        if tries > 1 and has_job(jobs, job_id):
            return
        try:
            jobs.submit_job(submission_id=job_id, **request)
        except RuntimeError as exc:  # taken by the try whose answer was lost, while it was checked
            if tries == 1 or "already exists" not in str(exc):
                raise

    retry.call(jobs.get_address(), attempt)


def has_job(jobs, job_id: str) -> bool:
    """Whether Ray has a job of that submission id (one request: retry.call retries around it)."""
    try:
        jobs.get_job_info(job_id)
    except RuntimeError as exc:
        if retry.http_status(exc) == 404:
            return False
        raise
    return True


def ask(jobs, method, *args):
    """A JobSubmissionClient method's answer, `jobs.METHOD(*args)` retried by retry.call."""
    return retry.call(jobs.get_address(), lambda: method(*args))


def settle(jobs, job_id: str, spec: JobSpec, uri: str, run_id: str, *, detach: bool, progress_to_stderr: bool):
    """What `orch submit` and `orch resume` return for a submitted job: detached, the run as it
    stands (SUBMITTED until the job runs); else follow() it to its end."""
    from orchestrator.runs.outcome import read_outcome

    if detach:
        state = ask(jobs, jobs.get_job_status, job_id)
        return read_outcome(uri, run_id, status="RUNNING" if str(state) == "RUNNING" else "SUBMITTED")
    return follow(jobs, job_id, spec, uri, run_id, progress_to_stderr)


def follow(jobs, job_id: str, spec: JobSpec, uri: str, run_id: str, progress_to_stderr: bool):
    """Print each epoch as the run logs it (not those a resumed run logged before) until the job
    ends; Ctrl-C stops the job. The run ends FINISHED, FAILED or KILLED whatever happened to the
    job (one that could not start never ends its run itself)."""
    from mlflow.tracking import MlflowClient

    from orchestrator.console.progress import EpochPrinter
    from orchestrator.runs import tracking
    from orchestrator.runs.outcome import ended_with_job, read_outcome

    done = set(tracking.epoch_history(uri, run_id))
    printer = EpochPrinter(uri, run_id, spec.training.epochs, err=progress_to_stderr, skip=done)
    printer.start()
    try:
        state = wait(jobs, job_id)
    except KeyboardInterrupt:
        click.echo(f"stopping Ray job {job_id} ...", err=True)
        ask(jobs, jobs.stop_job, job_id)
        wait(jobs, job_id, timeout_s=STOP_WAIT_S + 15)
        tracking.end_if_running(uri, run_id, "KILLED", "stopped by Ctrl-C while orch followed the Ray job")
        raise JobInterrupted(
            f"run {run_id} interrupted: Ray job {job_id} stopped, run marked KILLED, checkpoints kept"
        ) from None
    finally:
        printer.stop()
    tracking.end_if_running(uri, run_id, ended_with_job(state), lambda: _job_failure(jobs, job_id))
    result = read_outcome(uri, run_id)
    if result.status == "KILLED":
        raise JobInterrupted(f"run {run_id} was stopped (Ray job {job_id} {state}): marked KILLED, checkpoints kept")
    if result.status != "FINISHED":
        error = MlflowClient(uri).get_run(run_id).data.tags.get(ERROR_TAG, "")
        raise JobFailed(
            f"run {run_id} {result.status}: {last_line(error, 'no cause recorded')} "
            f"(`orch logs {run_id}` has the job's output)"
        )
    return result


def _job_failure(jobs, job_id: str) -> str:
    """Why a job ended without ending its run: Ray's message and the end of its log (which Ray's
    message holds already when the entrypoint failed)."""
    try:
        info = ask(jobs, jobs.get_job_info, job_id)
        tail = "\n".join(ask(jobs, jobs.get_job_logs, job_id).strip().splitlines()[-20:])
    except Exception as exc:  # the head went away: say so rather than nothing
        return f"Ray job {job_id}: its status could not be read ({exc})"
    message = (info.message or "").strip()
    if tail and tail.splitlines()[-1] not in message:
        message = f"{message}\n{tail}"
    return f"Ray job {job_id} {info.status}: {message}"


# --- the Jobs API ----------------------------------------------------------------------------


def connect(address: str) -> str:
    """Check that the head answers (a public endpoint, so no token is needed yet) and use the
    cluster's token when it asks for one. Returns the address without a trailing slash."""
    if not address:
        raise OrchError(
            "no Ray cluster to submit to: pass --address http://HEAD:8265 (the head's dashboard), "
            "or set RAY_ADDRESS or cluster.address"
        )
    address = address.rstrip("/") if "://" in address else f"http://{address.rstrip('/')}"
    retry.bound_s()  # a bad $ORCH_RAY_RETRY_S is one line before the cluster is asked anything
    try:
        mode = _get(address, "/api/authentication_mode").get("authentication_mode")
    except _NotFound:  # a Ray from before token authentication: any Ray answers /api/version
        mode = _get(address, "/api/version") and "disabled"
    if mode == "token":
        _internal(ray_internals.use_cluster_token)
    return address


def alive_nodes(address: str) -> list[dict]:
    """Each alive node's total resources ({"CPU": 8.0, "GPU": 1.0, ...}), from the state API. A
    head whose dashboard answers before its own node is alive says "not yet" (retry.NotYet)."""

    def alive(reply: dict) -> list[dict]:
        rows = reply.get("data", {}).get("result", {}).get("result", [])
        found = [row.get("resources_total", {}) for row in rows if row.get("state") == "ALIVE"]
        if not found:
            raise retry.NotYet("no alive node yet")
        return found

    return _get(address, "/api/v0/nodes", then=alive, limit=10000)


def client(address: str):
    """Ray's JobSubmissionClient for `address`, whatever $RAY_ADDRESS says (it asks the head for
    its version: retried as every request is)."""
    from ray.job_submission import JobSubmissionClient

    for name, level in ray_internals.JOB_SUBMISSION_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    with _without_env(_ADDRESS_VARIABLES):
        try:
            return retry.call(address, lambda: JobSubmissionClient(address))
        except (ConnectionError, RuntimeError, requests.RequestException, retry.NotReady) as exc:
            raise unreachable(address, _reason(exc)) from None


def wait(jobs, job_id: str, poll_s: float = 2.0, timeout_s: float | None = None):
    """Poll until the job is STOPPED, SUCCEEDED or FAILED (or `timeout_s` passes) and return
    its last status; a head that stops answering for longer than retry's bound is an error."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        try:
            status = ask(jobs, jobs.get_job_status, job_id)
        except (requests.RequestException, ConnectionError, retry.NotReady) as exc:
            raise unreachable(jobs.get_address(), _reason(exc)) from None
        if status.is_terminal():
            return status
        if deadline is not None and time.monotonic() > deadline:
            return status
        time.sleep(poll_s)


# --- the lifecycle of a run submitted as a Ray job: `orch status/logs/stop` call these for runs
# tagged orch.target=ray, as they call targets.kuberay's for orch.target=k8s.


def job_status(run) -> dict:
    jobs, job_id = _job_of(run)
    info = ask(jobs, jobs.get_job_info, job_id)
    return {
        "ray_address": jobs.get_address(),
        "ray_job_id": job_id,
        "ray_job_status": str(info.status),
        "ray_job_message": info.message,
    }


def job_logs(run) -> str:
    jobs, job_id = _job_of(run)
    return ask(jobs, jobs.get_job_logs, job_id)


def follow_logs(run):
    """The job's logs as they come (Ray's websocket tail), until the job ends."""
    jobs, job_id = _job_of(run)
    loop = asyncio.new_event_loop()
    chunks = jobs.tail_job_logs(job_id)
    try:
        while True:
            try:
                yield loop.run_until_complete(chunks.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(chunks.aclose())
        loop.close()


def stop_job(run) -> dict:
    """Ask Ray to stop the job: its entrypoint gets SIGTERM, aborts Ray Train and ends the run KILLED."""
    jobs, job_id = _job_of(run)
    if ask(jobs, jobs.stop_job, job_id):
        return {"how": f"asked the Ray Jobs API at {jobs.get_address()} to stop job {job_id}", "running": True}
    return {
        "how": f"Ray job {job_id} had already ended ({ask(jobs, jobs.get_job_status, job_id)}); marked KILLED",
        "running": False,
    }


class _NotFound(OrchError):
    """The server answered 404: not a Ray dashboard, or one without that endpoint."""


def unreachable(address: str, why: str) -> OrchError:
    return OrchError(
        f"cannot reach the Ray Jobs API at {address}: {why}; is the head running? (--address / RAY_ADDRESS)"
    )


def _job_of(run):
    tags = run.data.tags
    address, job_id = tags.get(RAY_ADDRESS_TAG), tags.get(RAY_JOB_ID_TAG)
    if not address or not job_id:
        raise OrchError(
            f"run {run.info.run_id} has no Ray job recorded (tags orch.ray_address, "
            "orch.ray_job_id): its submission did not get that far"
        )
    return client(connect(address)), job_id


def _get(address: str, path: str, then=None, **params):
    """The JSON a dashboard endpoint answers, or `then` of it, through retry.call (`then` may
    raise retry.NotYet); a final answer or a wait that passed is one line."""

    def once():
        reply = requests.get(
            address + path, params=params, headers=_internal(ray_internals.auth_headers), timeout=TIMEOUT_S
        )
        reply.raise_for_status()
        try:
            answer = reply.json()
        except ValueError:
            raise unreachable(address, f"{path} did not answer JSON: is this a Ray dashboard?") from None
        return then(answer) if then else answer

    try:
        return retry.call(address, once)
    except requests.HTTPError as exc:
        raise _refused(address, path, exc.response) from None
    except (requests.RequestException, retry.NotReady) as exc:
        raise unreachable(address, _reason(exc)) from None


def _refused(address: str, path: str, reply) -> OrchError:
    """The error for an HTTP answer that is final: a token refused, else not a Ray dashboard."""
    if reply.status_code in (401, 403):
        said = f"{reply.status_code}: {reply.text.strip()[:200]}"
        return OrchError(
            f"the Ray cluster at {address} refused orch ({said}); "
            "it checks tokens: put its token in $RAY_AUTH_TOKEN or ~/.ray/auth_token"
        )
    error = _NotFound if reply.status_code == 404 else OrchError
    said = " ".join(filter(None, [f"HTTP {reply.status_code}", reply.text.strip()[:200]]))
    return error(unreachable(address, f"{path} answered {said} (not a Ray dashboard?)"))


def _internal(function):
    """A Ray internal that moved is one line for the user, not a traceback."""
    try:
        return function()
    except ray_internals.RayInternalChanged as exc:
        raise OrchError(str(exc)) from None


def _reason(exc: Exception) -> str:
    if isinstance(exc, retry.NotReady):
        return str(exc)
    if isinstance(exc, requests.Timeout):
        return f"no answer within {TIMEOUT_S[0]:g} s" if isinstance(exc, requests.ConnectTimeout) else "timed out"
    return retry.answer_of(exc)


@contextlib.contextmanager
def _without_env(names):
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)
