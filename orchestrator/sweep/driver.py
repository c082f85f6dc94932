"""`orch sweep` and `orch resume PARENT`: check every trial, create (or reopen) the parent run,
run the trials that have not finished on Ray Tune, and end the parent.

Every check that can fail on bad input (the sweep file, each trial's spec, its data, the
cluster's resources) runs before the parent run exists. Once it does, it ends FINISHED (every
trial finished), FAILED (some trial failed; the others ran on) or KILLED (Ctrl-C or `orch stop`:
children still running are marked KILLED too), whatever happens. Then the report of its finished
trials is logged to it (orchestrator.report), as `orch report PARENT` would.
"""

import contextlib
import logging
import os

from orchestrator.console import terminal
from orchestrator.errors import JobFailed, JobInterrupted, OrchError, SpecError
from orchestrator.runs import tracking
from orchestrator.runs.driver import ACTIVE, driver_alive, driver_tags
from orchestrator.spec import preflight
from orchestrator.sweep import records
from orchestrator.sweep.spec import SweepSpec, load_sweep
from orchestrator.sweep.trials import Trial, concurrency, expand
from orchestrator.tags import RAY_ADDRESS_TAG, TARGET_TAG
from orchestrator.targets import cluster, jobs_address
from orchestrator.train.faults import FAULT_VARIABLE


def plan_sweep(path, overrides=()) -> tuple[SweepSpec, list[Trial]]:
    """The sweep file read and its trials listed and validated: what --dry-run prints."""
    sweep, job = load_sweep(path, overrides)
    return sweep, expand(sweep, job, str(path))


def run_sweep(
    path,
    overrides=(),
    *,
    uri: str | None = None,
    target: str | None = None,
    address: str | None = None,
    namespace: str | None = None,
    image: str | None = None,
    detach=False,
) -> dict:
    """Run every trial of the sweep file at `path` here (target local), as one Ray job on the
    cluster at `address` (target ray, implied by an address) or as one KubeRay RayJob (target
    k8s, in `namespace` with `image`); records.outcome() of its parent."""
    sweep, trials = plan_sweep(path, overrides)
    target = target or ("ray" if address else "local")
    if target == "k8s":
        from orchestrator.sweep import kube

        return kube.submit(sweep, trials, path, uri=uri, namespace=namespace, image=image, detach=detach)
    address = jobs_address(trials[0].spec, address) if target == "ray" else None
    if target == "ray" and not address:
        raise SpecError("--target ray: no Ray Jobs API to submit to; pass --address http://HEAD:8265")
    if address:
        from orchestrator.sweep import remote

        address, uri = remote.check(trials, address, uri)
        tags = {TARGET_TAG: "ray", RAY_ADDRESS_TAG: address}
    else:
        check_trials(trials)
        uri = tracking.tracking_uri(trials[0].spec, uri)
        tags = {TARGET_TAG: "local", **driver_tags()}
    parent_id = records.create_parent(uri, sweep, trials, os.path.abspath(path), tags)
    terminal.say(f"sweep {parent_id}: {len(trials)} trials")
    if address:
        return remote.submit(uri, parent_id, trials, address, detach=detach)
    return drive_sweep(uri, parent_id, sweep, trials)


def resume_sweep(found: tuple) -> dict:
    """Run the trials of a stopped sweep (`found`: its store and parent run) that did not finish
    (those that never started, failed or were stopped: each continues from its own latest good
    checkpoint), in the same parent run."""
    uri, parent = found
    parent_id = parent.info.run_id
    if parent.info.status == ACTIVE and driver_alive(parent) is not False:
        raise OrchError(f"sweep {parent_id} is still running; `orch stop {parent_id}` first")
    trials = records.recorded_trials(uri, parent_id)
    sweep = SweepSpec.model_validate(records.artifact_json(uri, parent_id, "sweep/sweep.json"))
    left = pending(uri, parent_id, trials)
    if not left:
        raise OrchError(f"sweep {parent_id}: every trial has finished; nothing to resume")
    target = parent.data.tags.get(TARGET_TAG)
    address = parent.data.tags.get(RAY_ADDRESS_TAG) if target == "ray" else None
    if address:
        from orchestrator.sweep import remote

        address, uri = remote.check([t for t in trials if t.index in left], address, uri)
    elif target == "k8s":  # a next RayJob, for the trials checked (in pod view) at submission
        from orchestrator.sweep import kube

        return kube.resume(uri, parent, sweep, trials, left)
    else:
        check_trials([t for t in trials if t.index in left])
    resumes = records.reopen(uri, parent, {} if address else driver_tags())
    terminal.say(f"sweep {parent_id}: resuming {len(left)} of {len(trials)} trials")
    if address:
        return remote.submit(uri, parent_id, trials, address, resume=resumes)
    return drive_sweep(uri, parent_id, sweep, trials)


def pending(uri: str, parent_id: str, trials: list[Trial]) -> list[int]:
    """The trials without a FINISHED child run."""
    runs = records.children(uri, parent_id)
    return [t.index for t in trials if t.index not in runs or runs[t.index].info.status != "FINISHED"]


def check_trials(trials: list[Trial]) -> None:
    """Each trial's spec and data (once per distinct data), then the cluster's resources."""
    for trial in trials:
        preflight.tell_warnings(preflight.plan(trial.spec))
    terminal.say(terminal.connecting())
    cluster.connect()
    for trial in trials:
        cluster.check_resources(trial.spec.scaling)


def drive_sweep(uri: str, parent_id: str, sweep: SweepSpec, trials: list[Trial]) -> dict:
    """Run the pending trials on the Tune of the Ray this process is connected to and end the
    parent (and any child left RUNNING). Its children are driven from the Tune actor that runs
    their trial, here or on a cluster: orch.target local, with that actor's driver tags;
    `orch stop CHILD` reaches their workers through MLflow (lifecycle.stop)."""
    from orchestrator.sweep.tune_run import build_tuner

    left = pending(uri, parent_id, trials)
    plan = {"uri": uri, "parent_id": parent_id, "trials": [t.as_json() for t in trials], "target": "local"}
    plan[FAULT_VARIABLE] = os.environ.get(FAULT_VARIABLE)  # the tests' fault hook reaches each trial's driver
    storage = f"{trials[0].spec.checkpoint.storage.rstrip('/')}/sweep-{parent_id[:8]}-tune"
    limit = concurrency(trials, sweep.max_concurrent_trials)
    terminal.say(f"sweep {parent_id}: {len(left)} trials to run, at most {limit} at once")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no tables from Tune
    status, error = "FAILED", None
    try:
        with _quiet_tune():
            build_tuner(sweep, trials, left, plan, limit, storage).fit()  # Ctrl-C: Tune stops the trials
        status, error = _verdict(uri, parent_id, trials)
    except (KeyboardInterrupt, SystemExit):
        status, error = "KILLED", "interrupted"
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        records.end_running_children(uri, parent_id, "KILLED", "the sweep was stopped")
        tracking.end_run(uri, parent_id, status, error)
    result = records.outcome(uri, parent_id, trials)
    report_result(uri, parent_id)
    if status == "KILLED":
        raise JobInterrupted(f"sweep {parent_id} stopped: {error}; `orch resume {parent_id}` runs the trials left")
    if status == "FAILED":
        raise JobFailed(f"sweep {parent_id}: {error}; `orch resume {parent_id}` runs them again")
    return result


def report_result(uri: str, parent_id: str) -> None:
    """The sweep's report on its parent run (artifacts, description, summary metrics), as `orch
    report PARENT` makes it, so the MLflow UI shows the result; a report that cannot be made is
    a warning, never the sweep's failure."""
    from orchestrator.report import report_sweep_end

    problem = report_sweep_end(uri, parent_id)
    terminal.say(f"sweep {parent_id}: {problem or f'report logged to the parent run (`orch report {parent_id}`)'}")


def _verdict(uri: str, parent_id: str, trials: list[Trial]) -> tuple[str, str | None]:
    runs = records.children(uri, parent_id)
    statuses = {t.index: (runs[t.index].info.status if t.index in runs else "NOT_STARTED") for t in trials}
    unfinished = [i for i, s in statuses.items() if s in ("RUNNING", "NOT_STARTED", "KILLED")]
    if unfinished:
        return "KILLED", f"trials {_listed(unfinished)} did not finish"
    failed = [i for i, s in statuses.items() if s == "FAILED"]
    if failed:
        return "FAILED", f"trials {_listed(failed)} of {len(trials)} FAILED"
    return "FINISHED", None


def _listed(indices: list[int]) -> str:
    return ", ".join(str(i) for i in indices)


@contextlib.contextmanager
def _quiet_tune():
    """Tune's own advice on an interrupted run (Tuner.restore) is not how orch resumes one."""
    logger = logging.getLogger("ray.tune")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
