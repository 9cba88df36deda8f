# Developer and CI entry points. `make demo` and `make test` work on a fresh
# clone: the first run creates .venv and installs the project into it.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
# Marker of a finished install, so later runs skip pip until a
# pyproject.toml changes.
INSTALLED := $(VENV)/.installed
IMAGE ?= localhost/gmmserve:latest
DEPS_IMAGE := localhost/gmmserve-deps:latest
PODMAN_BUILD_FLAGS := --format docker --network=host --pull=never
PYTEST_ARGS ?=

.PHONY: help setup demo test protos check-protos container-setup image bench

help:
	@echo "make demo             create .venv if needed and run gmmserve demo"
	@echo "make test             create .venv if needed and run the test suite"
	@echo "make protos           regenerate client/gmmserve_proto from protos/"
	@echo "make check-protos     fail when the generated code is stale"
	@echo "make container-setup  prepare podman and the python:3.11-slim base"
	@echo "make image            build the container image (IMAGE=$(IMAGE))"
	@echo "make bench            run the throughput benchmark"

$(INSTALLED): pyproject.toml client/pyproject.toml
	test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install -e ".[test]"
	touch $@

setup: $(INSTALLED)

demo: $(INSTALLED)
	$(VENV)/bin/gmmserve demo

test: $(INSTALLED)
	$(VENV_PYTHON) -m pytest $(PYTEST_ARGS)

protos: $(INSTALLED)
	$(VENV_PYTHON) scripts/generate_protos.py

check-protos: $(INSTALLED)
	$(VENV_PYTHON) scripts/generate_protos.py --check

container-setup:
	scripts/container_setup.sh >/dev/null

# podman 4.3 copies the venv of the deps stage into a new layer on every
# build, so each build leaves a dangling image of about 300 MB. Tagging the
# deps stage keeps its cache safe from the prune that removes them.
image:
	eval "$$(scripts/container_setup.sh)" \
	    && podman build $(PODMAN_BUILD_FLAGS) --target deps -t $(DEPS_IMAGE) . \
	    && podman build $(PODMAN_BUILD_FLAGS) -t $(IMAGE) . \
	    && podman image prune --force >/dev/null

bench: $(INSTALLED)
	$(VENV)/bin/gmmserve bench
