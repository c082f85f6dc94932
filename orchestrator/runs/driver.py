"""Who drives a run: the process that fits its trainer (`orch submit`, `orch resume`, a cluster
job's entrypoint, a sweep trial's Tune actor) records itself in the run's driver tags, so that
`orch stop` from another shell can reach it and a RUNNING run whose driver is gone can be told
from one that trains.
"""

import os
import socket

import psutil

from orchestrator.tags import DRIVER_HOST_TAG, DRIVER_PID_TAG, DRIVER_STARTED_TAG

ACTIVE = "RUNNING"  # the MLflow status of a run whose job goes on


def driver_tags() -> dict:
    """Who drives the run, so that `orch stop` from another shell can reach it (the start time
    tells the driver from a later process that got the same pid)."""
    return {
        DRIVER_PID_TAG: os.getpid(),
        DRIVER_HOST_TAG: socket.gethostname(),
        DRIVER_STARTED_TAG: f"{psutil.Process().create_time():.2f}",
    }


def driver_alive(run) -> bool | None:
    """Whether the run's driver process still runs: None when it runs on another host."""
    tags = run.data.tags
    pid = tags.get(DRIVER_PID_TAG)
    if not pid or not pid.isdigit():
        return False
    if tags.get(DRIVER_HOST_TAG, socket.gethostname()) != socket.gethostname():
        return None
    try:
        started = psutil.Process(int(pid)).create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True
    recorded = tags.get(DRIVER_STARTED_TAG)
    return recorded is None or abs(float(recorded) - started) < 1.0
