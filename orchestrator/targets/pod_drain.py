"""A Kubernetes worker pod's preStop hook: drain this pod's Ray node for preemption, then wait.

Kubernetes stops a pod (an eviction, a node drain, a spot node's reclaim, a scale-down) by
running its preStop hook, then sending SIGTERM to the container's `ray start`, then SIGKILL
after terminationGracePeriodSeconds. SIGTERM to `ray start` takes the node's training workers
down at once, before they can checkpoint. So the hook first drains the node through Ray's GCS
(reason PREEMPTION, the deadline --deadline-s away: the call `ray drain-node` and autoscalers
make). Ray Train's preemption watcher tells every worker; they write a step checkpoint and train
on (orchestrator/train/notices.py); at the deadline Ray Train restarts the worker group on the
nodes left, charged to its preemption budget. The hook waits out the deadline, so that SIGTERM
comes only then.

    python -m orchestrator.targets.pod_drain --deadline-s 60
"""

import argparse
import sys
import time

import ray

from orchestrator import ray_internals


def drain_this_node(deadline_s: float, address: str = "auto", node_id: str | None = None) -> str:
    """Drain the Ray node this process runs on (or `node_id`) of the Ray at `address`, with the
    deadline `deadline_s` seconds away; returns the node's id."""
    ray_internals.use_cluster_token()  # a cluster that checks tokens (Ray 2.60's default) gets ours
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        node_id = node_id or ray.get_runtime_context().get_node_id()
        gcs = ray.get_runtime_context().gcs_address
        ray_internals.drain_node(gcs, node_id, time.time() + deadline_s, "pod stopping (Kubernetes preStop)")
    finally:
        ray.shutdown()
    return node_id


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.targets.pod_drain", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--deadline-s", type=float, required=True, help="seconds until the node goes away")
    parser.add_argument("--address", default="auto", help="the Ray cluster (default: the one this pod runs)")
    parser.add_argument("--node-id", default=None, help="the node to drain (default: this pod's)")
    parser.add_argument("--no-wait", action="store_true", help="return once the drain is accepted")
    args = parser.parse_args(argv)
    began = time.monotonic()
    try:
        node = drain_this_node(args.deadline_s, args.address, args.node_id)
    except Exception as exc:  # the pod stops anyway: say why it was not drained
        print(f"orch pod_drain: not drained: {exc}", file=sys.stderr)
        return 1
    print(f"orch pod_drain: node {node} drained for preemption, deadline in {args.deadline_s:g} s", flush=True)
    if not args.no_wait:
        time.sleep(max(0.0, args.deadline_s - (time.monotonic() - began)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
