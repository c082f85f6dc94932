# orch: `make demo` trains a real job on an embedded local Ray; `make test` runs the suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
ORCH := $(VENV)/bin/orch
# FFCV builds against OpenCV and libjpeg-turbo; the demo and the tests read Debian's Fashion-MNIST.
APT_PACKAGES := pkg-config libopencv-dev libturbojpeg0-dev dataset-fashion-mnist
DEMO_DATA := data/fashion-mnist

.PHONY: setup system-deps lint test demo clean

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

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

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
