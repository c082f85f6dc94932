"""How orch answers a Ray cluster that says "not yet". Every request orch makes to a Ray
cluster's Jobs API and dashboard goes through call() (targets/ray_cluster.py makes them all, for
`orch submit --address`, `orch sweep --address`, `orch resume` and `orch status/logs/stop`):
an answer that classify() finds transient is retried with exponential backoff (capped at
MAX_PAUSE_S) for a bounded time, and the user is told once, in one line on stderr, what orch
waits for. Anything else is raised at once, as before.

Transient, retried for the bound:
- HTTP 500 "No available agent to submit job, please try again later" (or "Failed to get head
  node agent"): a head whose dashboard answers before its agent has registered;
- HTTP 502, 503, 504: a proxy or load balancer in front of a head that is not up yet;
- a connection reset or closed without an answer: a head starting or restarting;
- NotYet, raised by a caller for an answer that means "not yet" (a head with no alive node);
- once the head has answered in this process: any lost connection (refused, reset, timed
  out, a name that no longer resolves), which is a head restarting.

Permanent, raised at once: a wrong address at first contact (no answer within the connect
timeout, a name that does not resolve, an unreachable network), any other HTTP answer (404 from
a server that is not Ray's, 401/403 a refused token, 400 a bad request), everything else.

Connection refused at the first contact is what a head still starting gives, and also what a
wrong port gives. It is retried for REFUSED_AT_FIRST_S (10 s), quietly, and then fails in one
line: a wrong address still fails within seconds, and a head started a moment before the
command gets the seconds its dashboard needs to listen (a loopback head's answered 5.8 s after
`ray start --head` on a 2-core machine). A user who sets ORCH_RAY_RETRY_S asked
for the wait: refused first contacts are then retried as long as the other transient answers.

The bound is per request, from its first attempt: ORCH_RAY_RETRY_S seconds (default 120; 0
retries nothing). When it passes, NotReady (a one-line OrchError) says what orch waited for,
how long, and the last answer.
"""

import os
import re
import time
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import click
import requests

from orchestrator.errors import OrchError, last_line

SETTING = "ORCH_RAY_RETRY_S"
DEFAULT_S = 120.0
REFUSED_AT_FIRST_S = 10.0
FIRST_PAUSE_S, MAX_PAUSE_S = 0.5, 8.0
_NOT_READY_STATUSES = (502, 503, 504)
_NO_AGENT = ("No available agent to submit job", "Failed to get head node agent")
_RAY_HTTP_ERROR = re.compile(r"Request failed with status code (\d{3}): (.*)", re.DOTALL)
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")
_RESET = ("reset by peer", "Connection aborted", "closed connection without response", "Connection broken")
_ANSWERED: set[str] = set()  # the addresses whose head answered in this process
_TOLD: set[str] = set()  # the addresses whose wait was told on stderr

T = TypeVar("T")


class NotYet(Exception):
    """An answer that means "not yet", raised by a caller for call() to retry; its text says
    what orch waits for ("no alive node yet")."""


class NotReady(OrchError):
    """The cluster still said "not yet" when the bound passed."""


class Wait(NamedTuple):
    """What a transient answer means: what orch waits for (a few words), how long such answers
    are retried from a request's first attempt, and whether that wait is quiet (no line)."""

    why: str
    for_s: float
    quiet: bool = False


def bound_s() -> float:
    """How long a request's transient answers are retried: $ORCH_RAY_RETRY_S, else DEFAULT_S."""
    raw = os.environ.get(SETTING, "").strip()
    if not raw:
        return DEFAULT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= 0:  # also NaN
        raise OrchError(
            f"{SETTING}={raw!r}: expected seconds, a number >= 0 (0 retries nothing; default {DEFAULT_S:g})"
        )
    return value


def classify(exc: BaseException, answered: bool) -> Wait | None:
    """A Wait when `exc` (a failed request) means "not yet", None when it is a final answer.
    `answered`: whether the head has answered before in this process (the module docstring
    lists what is which)."""
    status = http_status(exc)
    if status is not None:
        text = http_text(exc)
        if status == 500 and any(said in text for said in _NO_AGENT):
            return Wait("no available agent yet", bound_s())
        return Wait(f"HTTP {status}, not ready yet", bound_s()) if status in _NOT_READY_STATUSES else None
    if isinstance(exc, NotYet):
        return Wait(str(exc), bound_s())
    lost = connection_lost(exc)
    if lost is None:
        return None
    if lost == "connection reset" or answered:
        return Wait(lost, bound_s())
    if lost == "connection refused":
        chosen = bool(os.environ.get(SETTING, "").strip())
        return Wait(lost, bound_s(), quiet=False) if chosen else Wait(lost, min(REFUSED_AT_FIRST_S, bound_s()), True)
    return None


def connection_lost(exc: BaseException) -> str | None:
    """How a request that got no HTTP answer failed: "connection refused", "connection reset",
    "no answer in time", "connection failed" (a name that does not resolve, no route); None
    for any other exception."""
    if isinstance(exc, requests.Timeout):
        return "no answer in time"
    if not isinstance(exc, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError, ConnectionError)):
        return None
    text = f"{exc!r} {exc}"
    if isinstance(exc, ConnectionRefusedError) or "Connection refused" in text:
        return "connection refused"
    if isinstance(exc, ConnectionResetError) or any(word in text for word in _RESET):
        return "connection reset"
    return "connection failed"


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of an answer a request did not take: requests' HTTPError, or the
    RuntimeError Ray's JobSubmissionClient raises ("Request failed with status code 500: ...")."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return exc.response.status_code
    found = _RAY_HTTP_ERROR.search(str(exc)) if isinstance(exc, RuntimeError) else None
    return int(found.group(1)) if found else None


def http_text(exc: BaseException) -> str:
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return exc.response.text
    found = _RAY_HTTP_ERROR.search(str(exc))
    return found.group(2) if found else ""


def answer_of(exc: BaseException) -> str:
    """A failed request's answer in one short line: "HTTP 500: No available agent ...", the
    system's word for a failed connection ("Connection refused"), else the exception's last line."""
    status = http_status(exc)
    if status is not None:
        return " ".join(filter(None, [f"HTTP {status}:", last_line(http_text(exc))[:200]]))
    found = _ERRNO.search(str(exc))
    if found:
        return found.group(1).strip()
    return connection_lost(exc) or last_line(str(exc), type(exc).__name__)


def call(address: str, request: Callable[[], T]) -> T:
    """request()'s answer from the cluster at `address`, retrying the answers classify() finds
    transient until its Wait passes; a final answer is raised as it came, a transient one that
    outlasts its Wait as NotReady (or as it came when nothing was retried: ORCH_RAY_RETRY_S=0)."""
    started, pause, attempts = time.monotonic(), FIRST_PAUSE_S, 0
    while True:
        attempts += 1
        try:
            answer = request()
        except Exception as exc:
            if http_status(exc) is not None:
                _ANSWERED.add(address)
            wait = classify(exc, address in _ANSWERED)
            waited = time.monotonic() - started
            if wait is None or (waited >= wait.for_s and attempts == 1):
                raise
            if waited >= wait.for_s:
                raise NotReady(gave_up(wait, waited, exc)) from exc
            tell(address, wait)
            time.sleep(min(pause, wait.for_s - waited))
            pause = min(2 * pause, MAX_PAUSE_S)
            continue
        _ANSWERED.add(address)
        return answer


def gave_up(wait: Wait, waited_s: float, exc: BaseException) -> str:
    """NotReady's text: what orch waited for, how long, and the last answer when it says more."""
    answer = answer_of(exc)
    said = f"{wait.why} for {waited_s:.0f} s"
    return said if answer.lower() in wait.why.lower() else f"{said} (the last answer: {answer})"


def tell(address: str, wait: Wait) -> None:
    """One line on stderr, the first time orch waits for the cluster at `address`."""
    if wait.quiet or address in _TOLD:
        return
    _TOLD.add(address)
    said = f"{wait.why}; retrying for up to {wait.for_s:g} s ({SETTING})"
    click.echo(f"orch: the Ray Jobs API at {address}: {said}", err=True)
