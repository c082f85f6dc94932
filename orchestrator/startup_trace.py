"""Start-up stage marks, for bench/startup.py: with $ORCH_STARTUP_TRACE naming a file, the driver,
the Ray Train controller and each worker append `UNIX_TIME PID STAGE` lines to it as they reach
each stage of a job's start; without it nothing is written. Standard library only: the driver
marks before it imports anything heavy.

The driver reads the variable; the controller and the workers, whose environment is Ray's, get
the path with their configuration (`path()` there).
"""

import os
import time

VARIABLE = "ORCH_STARTUP_TRACE"


def path() -> str | None:
    return os.environ.get(VARIABLE) or None


def mark(stage: str, trace: str | None = None, at: float | None = None) -> None:
    """Append this process's mark for `stage` (now, or at the Unix time `at`) to `trace`
    (default: $ORCH_STARTUP_TRACE), if any."""
    trace = trace or path()
    if trace:
        with open(trace, "a") as f:
            f.write(f"{time.time() if at is None else at:.3f} {os.getpid()} {stage}\n")


def read(trace: str) -> list[tuple[float, int, str]]:
    """(time, pid, stage) of each mark in `trace`, in the order written."""
    with open(trace) as f:
        return [(float(t), int(pid), stage) for t, pid, stage in (line.rstrip("\n").split(" ", 2) for line in f)]


def controller_callback(trace: str):
    """Ray Train's controller marks when it starts and when each worker group has been placed and
    started (before its train context is set up); passed to Ray Train only while tracing."""
    from orchestrator import ray_internals

    group_callback, _ = ray_internals.callback_bases()
    controller_callback_base = ray_internals.controller_callback_base()

    class StartupMarks(controller_callback_base, group_callback):
        def after_controller_start(self, train_run_context):
            mark("controller: started", trace)

        def before_init_train_context(self, workers):
            mark("controller: workers placed and started", trace)
            return {}

    return StartupMarks()
