# Sanctum: two commands do all the set-up on a fresh Debian machine.
#   make demo   the whole platform on embedded defaults, a chat with retrieval, a receipt
#   make test   installs what is missing, starts the services the tests need, runs them
#   make bench  the benchmarks (not part of make test); results go to docs/benchmarks.md;
#               builds llama.cpp's llama-server first (cached under var/bench), the engine
#               benchmark's baseline
#   make lock   rewrites the hashed lock (requirements/*.txt) that the set-up installs
#   make release-manifest  writes var/release/manifest.json and prints the release digest
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test bench lint lock release-manifest setup setup-python setup-system services clean

setup-python:
	@scripts/setup.sh python

setup-system:
	@scripts/setup.sh system

setup: setup-system setup-python

demo: setup-python
	$(VENV)/bin/sanctum demo

services: setup
	@scripts/test-services.sh start

lint: setup-python
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	shellcheck -x $$(git ls-files '*.sh') .ci/run

test: setup services lint
	$(PY) -m pytest
	DATABASE_URL=$$(scripts/test-services.sh database-url) $(PY) -m pytest -m postgres_suite tests/control_plane

# After a change to pyproject.toml's dependencies (pip-compile is one of the dev tools).
lock: setup-python
	@VENV=$(VENV) scripts/lock.sh

release-manifest: setup-python
	$(VENV)/bin/sanctum release-manifest --out var/release/manifest.json

# A llama-server that fails to build does not stop the other benchmarks: the engine
# benchmark then skips its rows and says why in its section.
bench: setup services
	@VENV=$(VENV) scripts/build-llama-server.sh >/dev/null \
	  || echo "llama-server could not be built: the engine benchmark skips its rows" >&2
	$(PY) -m tests.bench

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
