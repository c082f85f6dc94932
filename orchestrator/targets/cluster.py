"""Connecting to Ray and checking, before anything waits, that it can give what a job asks."""

import logging
import os

import ray

from orchestrator import ray_internals
from orchestrator.errors import OrchError, ResourceError
from orchestrator.spec.schema import ScalingSpec

# The Ray orch starts on this machine leaves out what only an operator watching Ray itself
# reads: the Ray dashboard and its agents' work, metric export and Ray Train's metrics. Each Ray
# process wakes every 10 ms; on 2 cores these cost training several percent (bench/overhead.py).
# Ray Train's preemption watcher stays on, as everywhere orch runs: it is how a drained node's
# notice reaches the workers (orchestrator/train/notices.py).
# ORCH_RAY_DASHBOARD=1 starts the full Ray instead, dashboard on 127.0.0.1:8265.
LEAN_RAY_ENV = {
    "RAY_enable_metrics_collection": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
}


def connect(address: str | None = None) -> None:
    """Join the Ray at `address` or $RAY_ADDRESS or one started on this machine (`ray start`);
    else start one, lean."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Says that token auth (Ray's default) is on: news to Ray's operators, noise to a researcher.
    logging.getLogger(ray_internals.TOKEN_SETUP_LOGGER).setLevel(logging.ERROR)
    full = os.environ.get("ORCH_RAY_DASHBOARD", "0") == "1"
    try:
        joining = address is not None or ray_internals.running_ray_address() is not None
        if joining:  # Ray 2.60's clusters check a token, which its driver sends only in token mode
            ray_internals.use_cluster_token()
    except ray_internals.RayInternalChanged as exc:
        raise OrchError(str(exc)) from None
    if not joining and not full:
        for name, value in LEAN_RAY_ENV.items():
            os.environ.setdefault(name, value)  # inherited by the Ray processes this process starts
    ray.init(
        address=address,
        include_dashboard=full,
        dashboard_host="127.0.0.1",
        log_to_driver=False,  # orch prints its own progress; worker logs stay in Ray's log files
        logging_level=logging.WARNING,
    )


def worker_resources(scaling: ScalingSpec) -> dict:
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    return resources


def check_resources(scaling: ScalingSpec, nodes: list[dict] | None = None, where: str = "the Ray cluster") -> None:
    """Fail fast, saying what is missing, instead of waiting forever for a placement group.

    `nodes` holds each alive node's total resources ({"CPU": 4, "GPU": 1, ...}); by default
    those of the Ray this process is connected to. A remote cluster's come from its dashboard.
    """
    per_worker = worker_resources(scaling)
    if nodes is None:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    totals = {name: sum(node.get(name, 0) for node in nodes) for name in per_worker}
    short = [
        (name, amount, totals[name])
        for name, amount in per_worker.items()
        if totals[name] < amount * scaling.num_workers
    ]
    if short:  # every resource that falls short, in one line
        count = f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}"
        lacks = "; ".join(
            f"{scaling.num_workers} workers x {amount:g} {name} = {amount * scaling.num_workers:g} {name}, "
            f"but {where} has {have:g} {name}"
            for name, amount, have in short
        )
        fixes = " or ".join(f"scaling.{'gpus' if name == 'GPU' else 'cpus'}_per_worker" for name, _, _ in short)
        gpu = ", or set scaling.use_gpu=false" if any(name == "GPU" for name, _, _ in short) else ""
        raise ResourceError(f"scaling: {lacks} ({count}); lower scaling.num_workers or {fixes}{gpu}")
    fits = [n for n in nodes if all(n.get(k, 0) >= v for k, v in per_worker.items())]
    if not fits:
        largest = max(nodes, key=lambda n: tuple(n.get(k, 0) for k in per_worker), default={})
        have = ", ".join(f"{largest.get(k, 0):g} {k}" for k in per_worker)
        want = ", ".join(f"{v:g} {k}" for k, v in per_worker.items())
        raise ResourceError(
            f"scaling: one worker needs {want} on one node, but the largest node of {where} "
            f"has {have}; lower scaling.cpus_per_worker or scaling.gpus_per_worker"
        )
