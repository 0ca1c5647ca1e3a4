# crew7 developer tasks.  `make test` is what CI runs (see .ci/run); `make help` lists them.

SHELL := /bin/bash
.DEFAULT_GOAL := test

VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Reinstall whenever the package metadata or the pins change.
DEPS   := $(wildcard setup.cfg pyproject.toml constraints.txt)
PIP_CONSTRAINTS := $(if $(wildcard constraints.txt),-c constraints.txt)
# System packages (deploy/system-packages.txt): the missing ones of a group are installed
# with apt-get when we are root, otherwise named in a warning.
SYSTEM_PACKAGES := scripts/install-system-packages.sh

# Databases the DB tests run on; the suite starts its own Redis and PostgreSQL.
CREW7_TEST_DBS ?= sqlite,postgresql
PYTEST_ARGS ?=

.PHONY: help venv install system-packages test test-unit test-fast run run-front nginx-conf lint clean

help: ## list the targets
	@echo "make [target]   (default: test)"
	@grep -hE '^[a-z][a-z -]*:.*## ' $(MAKEFILE_LIST) \
	  | sed -E 's/^([a-z -]+):.*## (.*)/\1\t\2/' \
	  | awk -F'\t' '{printf "  %-22s %s\n", $$1, $$2}'

venv install: $(STAMP) ## create .venv with the package and its dev extras (pinned)

$(BIN)/python:
	python3 -m venv $(VENV)

$(STAMP): $(DEPS) | $(BIN)/python
	$(BIN)/pip install $(PIP_CONSTRAINTS) -e '.[dev]'
	touch $@

system-packages: ## install every system package any target needs (apt-get, as root)
	$(SYSTEM_PACKAGES) test run front bench drill

test: install ## the test suite (what CI runs); installs redis-server, PostgreSQL, nginx + Lua
	$(SYSTEM_PACKAGES) test
	CREW7_TEST_DBS=$(CREW7_TEST_DBS) $(BIN)/pytest $(PYTEST_ARGS)

test-unit: install ## the unit layer: pure logic, no servers, in seconds (pytest -m unit)
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

test-fast: install ## the suite without slow tests, Sentinel/Cluster, gunicorn or nginx
	$(SYSTEM_PACKAGES) test
	CREW7_TEST_DBS=$(CREW7_TEST_DBS) CREW7_TEST_REDIS=standalone \
	  $(BIN)/pytest -m "not slow and not gunicorn and not nginx" $(PYTEST_ARGS)

run: ## serve the app with demo data on 127.0.0.1:8000 (scripts/run.sh)
	$(SYSTEM_PACKAGES) run
	scripts/run.sh

CREW7_FRONT_PORT ?= 8080
run-front: ## make run, plus the nginx front on 127.0.0.1:$(CREW7_FRONT_PORT)
	$(SYSTEM_PACKAGES) run front
	CREW7_FRONT_PORT=$(CREW7_FRONT_PORT) scripts/run.sh

nginx-conf: install ## render deploy/nginx.conf (compose's front) from the code
	deploy/render-nginx-conf.sh > deploy/nginx.conf.new && mv deploy/nginx.conf.new deploy/nginx.conf

lint: install ## ruff check
	$(BIN)/ruff check .

clean: ## remove .venv and caches (not instance/)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

# Benchmarks and fault drills (bench/README.md): they start their own PostgreSQL, Redis
# and gunicorn on 127.0.0.1 and write bench/results/. BENCH_SCALE=small for a quick run.
BENCH_SCALE ?= full

.PHONY: bench drill drill-staleness bench-deps

bench-deps: install ## what bench and drill need: wrk and the servers, matplotlib
	$(SYSTEM_PACKAGES) bench drill
	$(BIN)/pip install -q $(PIP_CONSTRAINTS) -r bench/requirements.txt

bench: bench-deps ## paired benchmarks with wrk (about 15 min; BENCH_SCALE=small: 5)
	BENCH_SCALE=$(BENCH_SCALE) $(BIN)/python bench/run.py

drill: bench-deps ## fault drills under load, then the staleness drills (about 6 min)
	$(BIN)/python bench/drill.py
	$(BIN)/python bench/staleness.py

drill-staleness: bench-deps ## the staleness drills alone (STALENESS_ONLY=row,... to choose)
	$(BIN)/python bench/staleness.py
