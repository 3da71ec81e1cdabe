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

.PHONY: setup apt run test protos bench images push-images clean-venv

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

# Images: $(REGISTRY)/<Dockerfile name>:$(VERSION), the names `flatland k8s manifests` and k8s/ pull
# (cluster.image_registry, cluster.image_tag). A version is pushed once: push-images refuses a tag the
# registry already has, and writes image-digests.yaml for `flatland k8s manifests --image-digests`.
REGISTRY ?= ghcr.io/beyond-flatland
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGES := $(basename $(notdir $(wildcard Dockerfiles/*.Dockerfile)))
DIGESTS ?= image-digests.yaml

images:
	@command -v docker >/dev/null && docker info >/dev/null 2>&1 || { echo "make images needs a running Docker engine; none here." >&2; exit 1; }
	@for n in $(IMAGES); do docker build -f Dockerfiles/$$n.Dockerfile -t $(REGISTRY)/$$n:$(VERSION) . || exit 1; done

push-images: images
	@for n in $(IMAGES); do \
	  if docker manifest inspect $(REGISTRY)/$$n:$(VERSION) >/dev/null 2>&1; then \
	    echo "$(REGISTRY)/$$n:$(VERSION) is already in the registry: bump version in pyproject.toml" >&2; exit 1; fi; \
	done
	@: > $(DIGESTS)
	@for n in $(IMAGES); do \
	  docker push $(REGISTRY)/$$n:$(VERSION) >/dev/null || exit 1; \
	  d=$$(docker inspect --format '{{index .RepoDigests 0}}' $(REGISTRY)/$$n:$(VERSION)); \
	  echo "$$n: $${d##*@}" >> $(DIGESTS); \
	done
	@echo "wrote $(DIGESTS): flatland k8s manifests SPEC --image-digests $(DIGESTS)"

clean-venv:
	rm -rf $(VENV)
