"""System metrics of every node that runs training workers, in the job's one MLflow run.

On each node, the worker of local rank 0 runs MLflow's SystemMetricsMonitor with a node id,
so its samples are logged as `system/<node>/cpu_utilization_percentage`,
`system/<node>/gpu_0_utilization_percentage`, `system/<node>/gpu_0_memory_usage_megabytes`
and so on (GPU figures through nvidia-ml-py, on nodes that have GPUs). The driver logs none:
on a cluster it runs on the head, which trains nothing.
"""

import contextlib
import logging
import socket
import threading


def config(spec, uri: str, run_id: str) -> dict | None:
    """What the workers need to log into the run (train_loop_config["telemetry"]); None when
    the spec turns system metrics off."""
    if not spec.tracking.system_metrics:
        return None
    return {"tracking_uri": uri, "run_id": run_id, "sampling_seconds": spec.tracking.system_metrics_seconds}


def node_label(ray_node_id: str) -> str:
    """`<hostname>-<first 6 hex of the Ray node id>`: readable, and distinct for two Ray nodes
    on one host. MLflow metric keys allow letters, digits, `_-. /`."""
    host = socket.gethostname().split(".")[0]
    safe = "".join(c if c.isalnum() or c in "_-." else "_" for c in host)
    return f"{safe}-{ray_node_id[:6]}"


@contextlib.contextmanager
def node_monitor(telemetry: dict | None, local_rank: int, ray_node_id: str):
    """Monitor this node while the block runs, when this worker is its local rank 0. The monitor
    starts in a thread of its own (importing MLflow takes seconds), so training does not wait."""
    if not telemetry or local_rank != 0:
        yield None
        return
    monitors = []
    starter = threading.Thread(target=lambda: monitors.append(_start_monitor(telemetry, ray_node_id)), daemon=True)
    starter.start()
    try:
        yield monitors
    finally:
        starter.join()
        for monitor in monitors:
            monitor.finish()


def _start_monitor(telemetry: dict, ray_node_id: str):
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # start/stop notices
    # resume_logging: after a restart (or on a second node) samples go on from the run's last step.
    monitor = SystemMetricsMonitor(
        telemetry["run_id"],
        sampling_interval=telemetry["sampling_seconds"],
        resume_logging=True,
        node_id=node_label(ray_node_id),
        tracking_uri=telemetry["tracking_uri"],
    )
    monitor.start()
    return monitor
