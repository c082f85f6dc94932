"""User-facing errors: each becomes one line on stderr and exit code 2, never a traceback."""

import re


class OrchError(Exception):
    """A problem the user can fix: the message names the field or file and the fix."""

    exit_code = 2
    label = "error"


class SpecError(OrchError):
    """The job spec or an override is invalid."""


class DataError(OrchError):
    """A dataset file or folder is missing, empty or unreadable."""


class ResourceError(OrchError):
    """The cluster cannot give what the job asks for."""


class JobFailed(OrchError):
    """The job started but training failed; the MLflow run is marked FAILED with the cause."""

    exit_code = 1


class JobInterrupted(OrchError):
    """The user interrupted the job (Ctrl-C); the run is marked KILLED, checkpoints kept."""

    exit_code = 130
    label = "stopped"


_RAY_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(DEBUG|INFO) ")


def last_line(text: str, default: str = "") -> str:
    """The last line of an error text that says what went wrong: not Ray's own INFO lines or its
    "Running entrypoint" line, which a Ray job's log may hold after the entrypoint's error."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    said = [line for line in lines if not (_RAY_LOG_LINE.match(line) or line.startswith("Running entrypoint for job"))]
    return (said or lines or [default])[-1]
