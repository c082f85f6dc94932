# orch: `make demo` trains a real job on an embedded local Ray; `make test` runs the suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
ORCH := $(VENV)/bin/orch
# FFCV builds against OpenCV and libjpeg-turbo; the demo and the tests read Debian's Fashion-MNIST;
# the tests start the tracking server k8s/mlflow.yaml runs on a PostgreSQL of their own.
APT_PACKAGES := pkg-config libopencv-dev libturbojpeg0-dev dataset-fashion-mnist postgresql
DEMO_DATA := data/fashion-mnist
# Every Python package's version, the test and server extras included: `make lock` writes it,
# `make setup` (so CI) and the Dockerfile install from it.
LOCK := requirements.lock
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-manylinux_2_28

.PHONY: setup system-deps lint test demo clean lock

setup: system-deps $(VENV)/.installed

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages: $$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; }; \
	  else \
	    echo "missing Debian packages; run: sudo apt-get install -y $$missing" >&2; exit 1; \
	  fi; \
	fi

# Exactly the locked versions, then orch itself (editable) without resolving anything again.
$(VENV)/.installed: pyproject.toml $(LOCK)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

# After changing a dependency in pyproject.toml: `make lock`, then `make setup`. For Linux x86_64
# and Python 3.11 (these machines, CI and the image); pins that still fit are kept, and
# `make lock UPGRADE=1` moves every one to the newest version allowed.
lock:
	@test -x $(VENV)/bin/uv || { echo "$(VENV)/bin/uv is missing: run make setup first" >&2; exit 1; }
	$(VENV)/bin/uv pip compile --quiet pyproject.toml --extra test --extra server $(LOCK_TARGET) $(if $(UPGRADE),--upgrade) -o $(LOCK)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup lint
	$(PY) -m pytest -q --durations=15

demo: setup
	@test -f $(DEMO_DATA)/val.beton || $(ORCH) data prepare fashion-mnist --out $(DEMO_DATA)
	$(ORCH) submit jobs/demo_fashion_mnist.yaml

clean:
	rm -rf $(VENV) data mlruns mlflow.db checkpoints
