"""Where a job runs: the Ray this machine reaches, embedded when none runs (local.py); a Ray
cluster through its Jobs API (ray_cluster.py); Kubernetes as a KubeRay RayJob (kuberay.py, its
manifest in kuberay_manifest.py). Remote jobs run entrypoint.py on the cluster, which trains
with the same code as a local run."""
