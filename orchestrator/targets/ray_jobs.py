"""A Ray cluster's Jobs API (the dashboard on its head, http://HEAD:8265): reaching it, what the
cluster has, and the job a run was submitted as (status, logs, stop).

Every request here has a timeout, and the address a user gives is the one used: Ray's
JobSubmissionClient waits without a timeout and lets $RAY_ADDRESS override its argument, so
a wrong address would hang or reach another cluster instead of failing in seconds.
"""

import asyncio
import contextlib
import logging
import os
import re
import time

import requests

from orchestrator.errors import OrchError

TIMEOUT_S = (3.0, 30.0)  # connect, read
_ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
# "Uploading package ...", "Ignoring upload ... .gitignore", "Directory '.venv' is now ignored by
# default" (orch leaves it out anyway): news to nobody who runs `orch submit`.
_CHATTY_LOGGERS = {
    "ray.dashboard.modules.dashboard_sdk": logging.WARNING,
    "ray.dashboard.modules.job.sdk": logging.WARNING,
    "ray._private.runtime_env.packaging": logging.WARNING,
    "ray._private.runtime_env.working_dir": logging.ERROR,
}
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


def connect(address: str) -> str:
    """Check that the head answers (a public endpoint, so no token is needed yet) and use the
    cluster's token when it asks for one. Returns the address without a trailing slash."""
    if not address:
        raise OrchError("no Ray cluster to submit to: pass --address http://HEAD:8265 (the head's dashboard), "
                        "or set RAY_ADDRESS or cluster.address")
    address = address.rstrip("/") if "://" in address else f"http://{address.rstrip('/')}"
    try:
        mode = _get(address, "/api/authentication_mode").get("authentication_mode")
    except _NotFound:  # a Ray from before token authentication: any Ray answers /api/version
        mode = _get(address, "/api/version") and "disabled"
    if mode == "token":
        _use_token()
    return address


def alive_nodes(address: str) -> list[dict]:
    """Each alive node's total resources ({"CPU": 8.0, "GPU": 1.0, ...}), from the state API."""
    reply = _get(address, "/api/v0/nodes", limit=10000)
    rows = reply.get("data", {}).get("result", {}).get("result", [])
    return [row.get("resources_total", {}) for row in rows if row.get("state") == "ALIVE"]


def client(address: str):
    """Ray's JobSubmissionClient for `address`, whatever $RAY_ADDRESS says."""
    from ray.job_submission import JobSubmissionClient

    for name, level in _CHATTY_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    with _without_env(_ADDRESS_VARIABLES):
        try:
            return JobSubmissionClient(address)
        except (ConnectionError, RuntimeError) as exc:
            raise unreachable(address, str(exc)) from None


def wait(jobs, job_id: str, poll_s: float = 2.0, timeout_s: float | None = None):
    """Poll until the job is STOPPED, SUCCEEDED or FAILED (or `timeout_s` passes) and return
    its last status; a head that stops answering for a minute is an error."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    lost_since = None
    while True:
        try:
            status = jobs.get_job_status(job_id)
            lost_since = None
        except (requests.RequestException, ConnectionError) as exc:
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > 60:
                raise unreachable(jobs.get_address(), f"no answer for a minute ({_reason(exc)})") from None
            status = None
        if status is not None and status.is_terminal():
            return status
        if deadline is not None and time.monotonic() > deadline:
            return status
        time.sleep(poll_s)


# The lifecycle of a run submitted as a Ray job: `orch status/logs/stop` call these for runs
# tagged orch.target=ray, as they call targets.kuberay's for orch.target=k8s.

def job_status(run) -> dict:
    jobs, job_id = _job_of(run)
    info = jobs.get_job_info(job_id)
    return {"ray_address": jobs.get_address(), "ray_job_id": job_id, "ray_job_status": str(info.status),
            "ray_job_message": info.message}


def job_logs(run) -> str:
    jobs, job_id = _job_of(run)
    return jobs.get_job_logs(job_id)


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
    if jobs.stop_job(job_id):
        return {"how": f"asked the Ray Jobs API at {jobs.get_address()} to stop job {job_id}", "running": True}
    return {"how": f"Ray job {job_id} had already ended ({jobs.get_job_status(job_id)}); marked KILLED",
            "running": False}


class _NotFound(OrchError):
    """The server answered 404: not a Ray dashboard, or one without that endpoint."""


def unreachable(address: str, why: str) -> OrchError:
    return OrchError(f"cannot reach the Ray Jobs API at {address}: {why}; is the head running? "
                     "(--address / RAY_ADDRESS)")


def _job_of(run):
    tags = run.data.tags
    address, job_id = tags.get("orch.ray_address"), tags.get("orch.ray_job_id")
    if not address or not job_id:
        raise OrchError(f"run {run.info.run_id} has no Ray job recorded (tags orch.ray_address, "
                        "orch.ray_job_id): its submission did not get that far")
    return client(connect(address)), job_id


def _get(address: str, path: str, **params) -> dict:
    try:
        reply = requests.get(address + path, params=params, headers=_auth_headers(), timeout=TIMEOUT_S)
    except requests.RequestException as exc:
        raise unreachable(address, _reason(exc)) from None
    if reply.status_code in (401, 403):
        said = f"{reply.status_code}: {reply.text.strip()[:200]}"
        raise OrchError(f"the Ray cluster at {address} refused orch ({said}); "
                        "it checks tokens: put its token in $RAY_AUTH_TOKEN or ~/.ray/auth_token")
    if reply.status_code != 200:
        error = _NotFound if reply.status_code == 404 else OrchError
        said = " ".join(filter(None, [f"HTTP {reply.status_code}", reply.text.strip()[:200]]))
        raise error(unreachable(address, f"{path} answered {said} (not a Ray dashboard?)"))
    try:
        return reply.json()
    except ValueError:
        raise unreachable(address, f"{path} did not answer JSON: is this a Ray dashboard?") from None


def _use_token() -> None:
    """Ray 2.60 heads check a token by default; Ray's clients send theirs only in token mode, which
    Ray enters by itself only for a cluster it finds locally. The head said it checks tokens, so
    send the one at hand ($RAY_AUTH_TOKEN, ~/.ray/auth_token), unless RAY_AUTH_MODE says otherwise."""
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _auth_headers() -> dict:
    try:
        from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled
    except ImportError:
        return {}
    return get_auth_headers_if_auth_enabled({})


def _reason(exc: Exception) -> str:
    if isinstance(exc, requests.Timeout):
        return f"no answer within {TIMEOUT_S[0]:g} s" if isinstance(exc, requests.ConnectTimeout) else "timed out"
    found = _ERRNO.search(str(exc))
    return found.group(1).strip() if found else type(exc).__name__


@contextlib.contextmanager
def _without_env(names):
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)
