"""Where a job runs: the local Ray, a Ray cluster through its Jobs API, Kubernetes; and `orch resume`.
May import: spec, train, runs, recovery, console.

The Ray this machine reaches, embedded when none runs (local.py); a Ray cluster through its
Jobs API (ray_cluster.py, whose every request retry.py retries while the cluster says "not
yet"); Kubernetes as a KubeRay RayJob (kuberay.py, its manifest in
kuberay_manifest.py). Remote jobs run entrypoint.py on the cluster, which trains with the same
code as a local run. A job's names and commands are in naming.py, a leaf."""

import os


def jobs_address(spec, given: str | None = None) -> str | None:
    """The Ray Jobs API a job goes to: `given` (--address, or the cluster a resumed run ran on),
    else $RAY_ADDRESS when it is http(s)://... (host:port is a GCS address, which the local
    target joins with ray.init), else the spec's cluster.address."""
    env = os.environ.get("RAY_ADDRESS") or ""
    return given or (env if env.startswith(("http://", "https://")) else None) or spec.cluster.address
