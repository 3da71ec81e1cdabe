# The two commands: `make run` (set up, then run the quickstart experiment) and
# `make test` (set up, then run the whole test suite). Set-up is idempotent and
# does nothing when apt-packages.txt and pyproject.toml have not changed.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SPEC ?= experiments/quickstart.yaml
PYTEST_ARGS ?=

# Headless OpenGL on the CPU; GPU nodes set PYOPENGL_PLATFORM=egl.
export PYOPENGL_PLATFORM ?= osmesa

.PHONY: setup apt run test protos bench images clean-venv

setup: apt $(STAMP)

apt:
	@bash scripts/install-apt.sh apt-packages.txt

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

run: setup
	$(BIN)/flatland run $(SPEC)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

protos: setup
	$(BIN)/python -m services.common.protogen

bench: setup
	$(BIN)/python benchmarks/collect.py

images:
	@command -v docker >/dev/null && docker info >/dev/null 2>&1 || { echo "make images needs a running Docker engine; none here." >&2; exit 1; }
	@for f in Dockerfiles/*.Dockerfile; do n=$$(basename $$f .Dockerfile); docker build -f $$f -t beyond-flatland/$$n:0.1.0 . || exit 1; done

clean-venv:
	rm -rf $(VENV)
