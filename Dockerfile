# The training image: orch with Ray 2.60.0 (the RayJob's rayVersion), PyTorch with CUDA and FFCV.
# KubeRay runs it as the head and the workers of every `orch submit --target k8s` job and of
# k8s/raycluster.yaml; k8s/mlflow.yaml runs its MLflow server from it (orch[server]: psycopg 3
# for PostgreSQL, boto3 for S3). Every Python package is at the version requirements.lock pins,
# the versions `make setup` installs and the tests run on.
#
#   docker build -t REGISTRY/orch:0.1.0 .
#   docker push REGISTRY/orch:0.1.0
#   orch submit jobs/resnet152_imagenet.yaml --target k8s --image REGISTRY/orch:0.1.0
#
# Not built by the test suite: the development machines have no container engine, so
# tests/test_k8s_manifests.py checks only its basics.

# CUDA runtime and cuDNN from NVIDIA; torch's own wheels bring the CUDA libraries they were
# built with, so the base only has to be new enough for them. Nodes need an NVIDIA driver
# (and the device plugin that exposes nvidia.com/gpu).
ARG CUDA_BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04
FROM ${CUDA_BASE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Python 3.11 (what orch is tested with; requirements.lock is compiled for 3.11.0 and up, so
# Ubuntu 22.04's 3.11 fits). FFCV 1.0.2 is built from source: its setup asks pkg-config for
# opencv4 and libturbojpeg and compiles a C extension. KubeRay's default probes call wget.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3.11 python3.11-dev python3.11-venv \
        build-essential pkg-config libopencv-dev libturbojpeg0-dev \
        ca-certificates wget \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv "$VIRTUAL_ENV" \
    && pip install --upgrade pip setuptools wheel

# The heavy, rarely changing layer first: rebuilding after a code change reuses it. `-c`: the
# locked versions of what is installed (the image leaves out the test tools).
WORKDIR /src
COPY requirements.lock ./
RUN pip install -c requirements.lock "ray[default,train]" torch torchvision

# The project (non-editable) with the MLflow server's PostgreSQL and S3 clients (orch[server]).
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
COPY data_pipeline ./data_pipeline
COPY jobs ./jobs
RUN pip install -c requirements.lock ".[server]" \
    && python -c "import ffcv, psycopg, boto3, orchestrator.targets.kuberay_manifest"

# Non-root, uid 1000: the pods' fsGroup (orchestrator/targets/kuberay_manifest.py) lets it
# write checkpoints to the data volume.
RUN useradd --uid 1000 --create-home --shell /bin/bash orch
USER orch
WORKDIR /home/orch
