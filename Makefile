# crew7 developer tasks.  `make test` is what CI runs (see .ci/run).

SHELL := /bin/bash
.DEFAULT_GOAL := test

VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Reinstall whenever the package metadata or the pins change.
DEPS   := $(wildcard setup.cfg pyproject.toml constraints.txt)
PIP_CONSTRAINTS := $(if $(wildcard constraints.txt),-c constraints.txt)

# Databases the DB tests run on; the suite starts its own Redis and PostgreSQL.
CREW7_TEST_DBS ?= sqlite,postgresql
PYTEST_ARGS ?=

.PHONY: venv install test run lint clean

venv install: $(STAMP)

$(BIN)/python:
	python3 -m venv $(VENV)

$(STAMP): $(DEPS) | $(BIN)/python
	$(BIN)/pip install $(PIP_CONSTRAINTS) -e '.[dev]'
	touch $@

# Server binaries for the test suite: installed with apt-get when missing and we are root.
test: install
	@missing=; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	$(BIN)/python -c 'import sys; sys.path.insert(0, "tests"); import servers; \
	  sys.exit(servers.find_postgres_bin() is None)' || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing test servers:$$missing"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -q && apt-get install -y -q redis-server postgresql || exit 1; \
	  else \
	    echo "warning: missing$$missing (not root or no apt-get); their tests may be skipped" >&2; \
	  fi; \
	fi
	CREW7_TEST_DBS=$(CREW7_TEST_DBS) $(BIN)/pytest $(PYTEST_ARGS)

run:
	scripts/run.sh

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

# Benchmarks and fault drills (bench/README.md): they start their own PostgreSQL, Redis
# and gunicorn on 127.0.0.1 and write bench/results/. BENCH_SCALE=small for a quick run.
BENCH_SCALE ?= full

.PHONY: bench drill

bench: install
	$(BIN)/pip install -q $(PIP_CONSTRAINTS) -r bench/requirements.txt
	BENCH_SCALE=$(BENCH_SCALE) $(BIN)/python bench/run.py

drill: install
	$(BIN)/pip install -q $(PIP_CONSTRAINTS) -r bench/requirements.txt
	$(BIN)/python bench/drill.py
