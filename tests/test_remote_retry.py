"""A Ray cluster that says "not yet" (targets/retry.py): which answers are retried and which are
final, the bound and its one line on stderr, a submit whose answer was lost not submitted twice,
and a wrong address still failing at once. Without a cluster: the answers are the exceptions
Ray's client and requests raise, built as they raise them, or real ones from a local socket."""

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import pytest
import requests
from urllib3.exceptions import ProtocolError

from orchestrator.errors import JobFailed, OrchError
from orchestrator.targets import naming, ray_cluster, retry

from job_fixtures import DEMO
from remote_fixtures import RayNodes, auth_headers, ended_runs, job_sets, orch

HEAD = "http://head:8265"
NO_AGENT = "Request failed with status code 500: No available agent to submit job, please try again later.."


@pytest.fixture(autouse=True)
def fresh_policy(monkeypatch):
    """No head has answered and no wait was told yet (retry keeps both for the process)."""
    monkeypatch.setattr(retry, "_ANSWERED", set())
    monkeypatch.setattr(retry, "_TOLD", set())
    monkeypatch.delenv(retry.SETTING, raising=False)


def refused() -> requests.ConnectionError:
    """What requests raises for a port nothing listens on (port 9 on loopback)."""
    with pytest.raises(requests.ConnectionError) as info:
        requests.get("http://127.0.0.1:9", timeout=3)
    return info.value


def http_error(status: int, text: str = "") -> requests.HTTPError:
    reply = requests.Response()
    reply.status_code, reply._content = status, text.encode()
    return requests.HTTPError(response=reply)


RESET = requests.ConnectionError(ProtocolError("Connection aborted.", ConnectionResetError(104, "reset by peer")))
UNRESOLVED = requests.ConnectionError(
    "HTTPConnectionPool(host='no-such-head', port=8265): Max retries exceeded with url: / (Caused by "
    "NameResolutionError(\"Failed to resolve 'no-such-head' ([Errno -2] Name or service not known)\"))"
)


@pytest.mark.parametrize(
    "exc, answered, why, for_s",
    [
        (RuntimeError(NO_AGENT), False, "no available agent yet", 120),
        (RuntimeError("Request failed with status code 500: Failed to get head node agent in 10 s"), 0, "agent", 120),
        (http_error(503, "Service Unavailable"), False, "HTTP 503, not ready yet", 120),
        (http_error(502), False, "HTTP 502, not ready yet", 120),
        (http_error(504), True, "HTTP 504, not ready yet", 120),
        (RESET, False, "connection reset", 120),
        (retry.NotYet("no alive node yet"), False, "no alive node yet", 120),
        ("refused", True, "connection refused", 120),  # the head answered before: restarting
        (requests.ReadTimeout("read timed out"), True, "no answer in time", 120),
        (ConnectionError("Failed to connect to Ray at address: http://head:8265."), True, "connection failed", 120),
        # Final answers.
        (RuntimeError("Request failed with status code 500: Traceback ...\nKeyError: 'x'"), False, None, None),
        (http_error(404, "Not Found"), False, None, None),
        (http_error(401, "token required"), True, None, None),
        (http_error(403), False, None, None),
        (RuntimeError("Request failed with status code 400: invalid runtime_env"), True, None, None),
        (UNRESOLVED, False, None, None),  # a wrong name at first contact
        (requests.ConnectTimeout("no answer"), False, None, None),  # nothing answers at that address
        (OrchError("2 workers x 1 GPU = 2 GPU, but ..."), True, None, None),
        (ValueError("bad spec"), True, None, None),
    ],
)
def test_each_answer_is_transient_or_final(exc, answered, why, for_s):
    exc = refused() if exc == "refused" else exc
    wait = retry.classify(exc, bool(answered))
    if for_s is None:
        assert wait is None
        return
    assert wait.for_s == for_s and not wait.quiet and why in wait.why


def test_a_refused_first_contact_is_retried_briefly_and_quietly_unless_asked(monkeypatch):
    """Refused is what a head still starting gives, and a wrong port too: a short quiet window at
    first contact, the whole bound once the head has answered or when the user set the bound."""
    assert retry.classify(refused(), answered=False) == retry.Wait("connection refused", 10.0, quiet=True)
    monkeypatch.setenv(retry.SETTING, "300")
    assert retry.classify(refused(), answered=False) == retry.Wait("connection refused", 300.0)
    monkeypatch.setenv(retry.SETTING, "0")
    assert retry.classify(refused(), answered=False).for_s == 0


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_setting_is_one_line(monkeypatch, value):
    monkeypatch.setenv(retry.SETTING, value)
    with pytest.raises(OrchError, match=rf"ORCH_RAY_RETRY_S='{value}': expected seconds"):
        ray_cluster.connect("http://127.0.0.1:9")


def failing(*answers):
    """A request that raises each of `answers` in turn, then answers "ok"; its .calls count."""
    left = list(answers)

    def request():
        request.calls += 1
        if left:
            raise left.pop(0)
        return "ok"

    request.calls = 0
    return request


def test_transient_answers_are_retried_with_one_line_on_stderr(capsys):
    request = failing(RuntimeError(NO_AGENT), http_error(503))
    assert retry.call(HEAD, request) == "ok" and request.calls == 3
    assert retry.call(HEAD, failing(RESET)) == "ok"  # a later wait in the same command: told already
    err = capsys.readouterr().err
    assert err == (
        f"orch: the Ray Jobs API at {HEAD}: no available agent yet; retrying for up to 120 s (ORCH_RAY_RETRY_S)\n"
    )


def test_the_bound_passes_with_the_last_answer(monkeypatch):
    monkeypatch.setenv(retry.SETTING, "2")
    request = failing(RuntimeError(NO_AGENT), *[http_error(503, "Service Unavailable")] * 50)
    started = time.monotonic()
    with pytest.raises(retry.NotReady) as info:
        retry.call(HEAD, request)
    assert 2 <= time.monotonic() - started < 3 and request.calls == 4  # after 0.5 s, 1 s, then the 0.5 s left
    assert str(info.value) == "HTTP 503, not ready yet for 2 s (the last answer: HTTP 503: Service Unavailable)"


def test_a_final_answer_is_raised_at_once_and_a_zero_bound_retries_nothing(monkeypatch):
    request = failing(http_error(404))
    with pytest.raises(requests.HTTPError):
        retry.call(HEAD, request)
    assert request.calls == 1
    monkeypatch.setenv(retry.SETTING, "0")
    request = failing(RuntimeError(NO_AGENT))
    with pytest.raises(RuntimeError, match="No available agent"):  # as it came, as before the policy
        retry.call(HEAD, request)
    assert request.calls == 1


class StandIn:
    """A stand-in for Ray's JobSubmissionClient: each submit in turn is taken by "Ray" or not and
    answers with the error given, or fine once they are used up; get_job_info answers as the Jobs
    API does. A real head cannot be made to take a job and drop its answer except by timing a
    signal, so this stand-in records each submit instead."""

    def __init__(self, *submits: tuple[bool, Exception]):
        self.answers, self.submits, self.jobs = list(submits), [], {}

    def get_address(self) -> str:
        return HEAD

    def submit_job(self, *, submission_id: str, **request) -> str:
        self.submits.append(submission_id)
        if submission_id in self.jobs:
            raise RuntimeError(f"Request failed with status code 500: Job with submission_id {submission_id} exists")
        takes, error = self.answers.pop(0) if self.answers else (True, None)
        if takes:
            self.jobs[submission_id] = request
        if error:
            raise error
        return submission_id

    def get_job_info(self, job_id: str):
        if job_id not in self.jobs:
            raise RuntimeError(f"Request failed with status code 404: Job {job_id} does not exist..")
        return SimpleNamespace(status="PENDING", message="")


def test_a_submit_whose_answer_was_lost_is_not_submitted_again():
    jobs = StandIn((True, RESET))  # taken, and the connection reset before the answer came
    ray_cluster.submit_once(jobs, "demo-1234abcd", entrypoint="python -m x")
    assert jobs.submits == ["demo-1234abcd"] and list(jobs.jobs) == ["demo-1234abcd"]


def test_a_submit_the_head_did_not_take_is_submitted_again():
    jobs = StandIn((False, RuntimeError(NO_AGENT)))
    ray_cluster.submit_once(jobs, "demo-1234abcd", entrypoint="python -m x")
    assert jobs.submits == ["demo-1234abcd"] * 2 and list(jobs.jobs) == ["demo-1234abcd"]


def test_the_run_ends_failed_once_the_bound_passes(spec, mlflow_uri, monkeypatch):
    """The run is created once; the bound passes on "no available agent": FAILED, the last
    answer in its one-line reason."""
    from mlflow.tracking import MlflowClient

    from orchestrator.runs.tracking import start_run

    monkeypatch.setenv(retry.SETTING, "1")
    jobs = StandIn(*[(False, RuntimeError(NO_AGENT))] * 10)
    run_id = start_run(spec, str(DEMO), mlflow_uri)
    with pytest.raises(JobFailed) as info:
        ray_cluster.submit_job(jobs, spec, mlflow_uri, run_id, HEAD)
    said = "did not take the job: no available agent yet for 1 s (the last answer: HTTP 500: No available agent"
    assert said in str(info.value) and "\n" not in str(info.value)
    run = MlflowClient(mlflow_uri).get_run(run_id)
    assert run.info.status == "FAILED" and "No available agent" in run.data.tags["orch.error"]
    assert jobs.jobs == {} and set(jobs.submits) == {naming.ray_job_id(spec, run_id)}


@pytest.fixture
def spec(tmp_path):
    from orchestrator.spec import load_spec

    return load_spec(DEMO, [f"checkpoint.storage={tmp_path / 'ckpt'}"])


@pytest.fixture
def server():
    """A local HTTP server that is not Ray's: it answers every GET with the status in .status."""

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(httpd.status)
            self.end_headers()
            self.wfile.write(b"nope")

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Answer)
    httpd.status = 404
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


@pytest.mark.parametrize("status, said", [(404, "not a Ray dashboard?"), (401, "refused orch (401"), (403, "(403")])
def test_a_server_that_is_not_ray_or_refuses_the_token_fails_at_once(server, status, said):
    server.status = status
    started = time.monotonic()
    with pytest.raises(OrchError, match=re.escape(said)):
        ray_cluster.connect(f"http://127.0.0.1:{server.server_port}")
    assert time.monotonic() - started < 2


# --- a real head, submitted to the moment its dashboard answers --------------------------------

AT_START = 3  # one followed to its end, two --detach: each is mostly its `orch` process's imports


@pytest.mark.slow
def test_submits_into_a_head_still_starting_each_run_once(mlflow_server, small_fashion, tmp_path):
    """`ray start --head` on loopback and three `orch submit --address` of a 1-epoch job on 300
    images: one --detach at once with ORCH_RAY_RETRY_S set (a user starting a head and asking
    for the wait: its dashboard is not listening yet), then, the moment the dashboard answers
    /api/version, one followed to its end and one --detach, while the head's agent and node may
    not be up yet (Ray answers "No available agent ..." or lists no alive node). No failure is
    injected: the windows are the head's own, and how much of them each command meets depends
    on the machine, so the test holds the outcome: every command succeeds with at most one
    waiting line, every run is FINISHED, and the cluster has exactly one Ray job per run, the
    run's. (The answers themselves are the unit tests' above.)"""
    from ray.job_submission import JobSubmissionClient

    uri, nodes = mlflow_server.uri, RayNodes(cpus_per_node=2)
    sets = job_sets(
        small_fashion,
        tmp_path,
        *("data.max_train_samples=300", "data.max_val_samples=200", "scaling.num_workers=1"),
        *("scaling.placement=PACK", "checkpoint.shared=false", "tracking.system_metrics=false"),
    )

    def submit(i: int, *extra: str, **env):
        args = ("submit", str(DEMO), *sets, "--set", f"training.seed={i}", "--address", nodes.dashboard, "-o", "json")
        return orch(*args, *extra, uri=uri, cwd=tmp_path, **env)

    try:
        with ThreadPoolExecutor(AT_START) as pool:
            started = time.monotonic()
            nodes.start_head()
            early = pool.submit(submit, 0, "--detach", ORCH_RAY_RETRY_S="120")
            answered_s = nodes.wait_for_dashboard() - started
            followed, detached = pool.submit(submit, 1), pool.submit(submit, 2, "--detach")
            procs = [early.result(), followed.result(), detached.result()]
        assert all(p.returncode == 0 for p in procs), [p.stderr[-3000:] for p in procs] + [nodes.logs()]
        run_ids = [json.loads(p.stdout)["run_id"] for p in procs]
        runs = ended_runs(uri, run_ids, nodes, timeout_s=300)
        listed = JobSubmissionClient(nodes.dashboard, headers=auth_headers()).list_jobs()
    finally:
        nodes.stop()
    assert [r.info.status for r in runs] == ["FINISHED"] * AT_START, [r.data.tags.get("orch.error") for r in runs]
    job_ids = [job.submission_id for job in listed]
    assert sorted(job_ids) == sorted(r.data.tags["orch.ray_job_id"] for r in runs)  # one each, no other
    print(f"the dashboard answered {answered_s:.1f} s after `ray start --head`")
    for proc in procs:
        waits = [line for line in proc.stderr.splitlines() if "retrying for up to" in line]
        assert len(waits) <= 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        print(waits or "no wait")  # how much of the windows each command met (-s shows it)
