"""The names a job gets wherever it runs, and the command a cluster runs for it: Ray Train's run
name and the run's checkpoint folder, the ids and metadata of its Ray jobs (a run's, a
sweep's, a RayJob's), and the entrypoints' command lines with the spec they carry. Pure functions of the spec and the
run id, imported by every target, `orch resume` and the sweeps: a job is named here only.
"""

import base64
import json
import shlex

TRAIN_ENTRYPOINT = "orchestrator.targets.entrypoint"  # trains (or with --resume continues) one run
SWEEP_ENTRYPOINT = "orchestrator.sweep.entrypoint"  # runs a sweep's unfinished trials


def ray_run_name(spec, run_id: str) -> str:
    """Ray Train's name for the run: its folder under checkpoint.storage."""
    return f"{spec.name}-{run_id[:8]}"


def checkpoint_dir(spec, run_id: str) -> str:
    """Where Ray Train puts this run's checkpoints (epoch_NNNN directories)."""
    return f"{spec.checkpoint.storage.rstrip('/')}/{ray_run_name(spec, run_id)}"


def resume_suffix(resume: int) -> str:
    """`-rN` for a run's (or a sweep's) Nth resume, whose job is a new one: Ray never takes an id
    twice, nor Kubernetes a name."""
    return f"-r{resume}" if resume else ""


def ray_job_id(spec, run_id: str, resume: int = 0) -> str:
    """A run's Ray job's submission id (`orch submit --address`): `{name}-{run8}`, -rN for its Nth resume."""
    return ray_run_name(spec, run_id) + resume_suffix(resume)


def sweep_job_id(spec, parent_id: str, resume: int = 0) -> str:
    """A sweep's Ray job's submission id (`orch sweep --address`): `{job name}-sweep-{parent8}`, -rN."""
    return f"{spec.name}-sweep-{parent_id[:8]}" + resume_suffix(resume)


def rayjob_job_id(run_id: str) -> str:
    """The Ray job id of a RayJob's driver: names the MLflow run in Ray's dashboard and the
    driver's log file."""
    return f"orch-{run_id}"


def job_metadata(run_id: str) -> dict:
    """A Ray job's metadata: the MLflow run it trains (a sweep's job: its parent run), which
    Ray's dashboard shows beside the job."""
    return {"orch.run_id": run_id}


def encoded_spec(spec) -> str:
    """The resolved spec as base64 of its JSON: how it travels to a cluster job (--spec-b64, or
    $ORCH_SPEC_B64), which targets.entrypoint.read_spec decodes."""
    return base64.b64encode(json.dumps(spec.model_dump(mode="json")).encode()).decode()


def train_command(run_id: str, uri: str, *, python: str = "python", spec_b64: str | None = None, resume=False) -> str:
    """The driver command of a run's job: orch's trainer attached to the MLflow run the submitter
    created (with `resume`, reopened: it continues from the run's checkpoint)."""
    spec = ["--spec-b64", spec_b64] if spec_b64 else []
    command = [python, "-m", TRAIN_ENTRYPOINT, "--run-id", run_id, "--tracking-uri", uri, *spec]
    return shlex.join(command + (["--resume"] if resume else []))


def sweep_command(parent_id: str, uri: str, *, python: str = "python") -> str:
    """The driver command of a sweep's job: the unfinished trials of the sweep whose parent run
    is `parent_id`, on the Tune of the job's own Ray cluster."""
    return shlex.join([python, "-m", SWEEP_ENTRYPOINT, "--parent-run-id", parent_id, "--tracking-uri", uri])
