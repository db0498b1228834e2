# tvq — every target bootstraps its own pinned environment on first use (.tools/uv, then .venv).
SHELL := bash
ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
# An exported DAGSTER_HOME wins (production mode points it at dagster_home/production).
export DAGSTER_HOME ?= $(ROOT)/dagster_home
export UV_PYTHON_DOWNLOADS := never
UV_VERSION := 0.13.8
UV := $(ROOT)/.tools/bin/uv
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.synced-$(shell cat $(ROOT)/uv.lock $(ROOT)/pyproject.toml | cksum | cut -d' ' -f1)
HOST ?= 127.0.0.1
PORT ?= 3000
MLFLOW_PORT ?= 5000
# Where people open runs: every link tvq prints, and those the runs of any target (`make dev`'s
# daemon included) store in MLflow's tags and Dagster's metadata, follows these two
# (tvq_resources/links.py; a tracking server's links point at the server). An exported value
# wins, e.g. a proxy in front of the UIs.
export TVQ_UI_URL ?= http://$(HOST):$(PORT)
export TVQ_MLFLOW_UI_URL ?= http://$(HOST):$(MLFLOW_PORT)

.PHONY: setup demo dev test test-slow test-all check soak bench bench-large bench-executors backfill flow-production clean \
	mlflow-ui browser services services-stop services-status services-env postgres-server help docs docs-serve

## setup: the pinned environment (uv into .tools/, then .venv/ from uv.lock); every target runs it first
setup: $(STAMP)

$(UV):
	python3 -m venv $(ROOT)/.tools
	$(ROOT)/.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# --compile-bytecode: every process (CLI, code server, run worker, Ray worker, test) imports the
# installed packages from .pyc instead of compiling their sources (5 s instead of 11 s for the
# code location here; Python never writes them itself when PYTHONDONTWRITEBYTECODE is set).
$(STAMP): $(ROOT)/pyproject.toml $(ROOT)/uv.lock | $(UV)
	cd $(ROOT) && $(UV) sync --locked --compile-bytecode
	rm -f $(VENV)/.synced-*; touch $@

## demo: refresh the bars and materialise the newest run of every sleeve on the synthetic market
demo: $(STAMP)
	$(PY) -m tvq_assets.cli demo

## dev: the Dagster UI (asset graph, partitions, checks) and daemon on http://$(HOST):$(PORT)
## Stop it with Ctrl-C, or SIGINT/SIGTERM to make: the server's whole process group (webserver,
## daemon, code servers, runs) gets SIGINT, and SIGKILL if it has not stopped after DEV_GRACE s.
DEV_GRACE ?= 30
dev: $(STAMP)
	@cd $(ROOT); set -m; \
	$(VENV)/bin/dg dev -w workspace.yaml -h $(HOST) -p $(PORT) & server=$$!; \
	stop() { \
	  kill -INT -- -$$server 2>/dev/null; \
	  ( sleep $(DEV_GRACE); kill -KILL -- -$$server 2>/dev/null ) & watchdog=$$!; \
	  wait $$server; kill -- -$$watchdog 2>/dev/null; exit 0; \
	}; \
	trap stop INT TERM; \
	wait $$server

## mlflow-ui: the MLflow UI on http://$(HOST):$(MLFLOW_PORT) over $$MLFLOW_TRACKING_URI, else the local store
mlflow-ui: $(STAMP)
	@store="$${MLFLOW_TRACKING_URI:-sqlite:///$(DAGSTER_HOME)/mlflow/mlflow.db}"; \
	case "$$store" in http*) echo "runs are on the tracking server: open $$store"; exit 0;; esac; \
	mkdir -p $(DAGSTER_HOME)/mlflow; \
	echo "MLflow UI on http://$(HOST):$(MLFLOW_PORT) (store: $$store)"; \
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow server --backend-store-uri "$$store" \
	  --artifacts-destination $(DAGSTER_HOME)/mlflow/artifacts -h $(HOST) -p $(MLFLOW_PORT) --workers 1

# Test processes (pytest-xdist): a test file runs whole on one of them, so its module fixtures
# are built once; JOBS=1 runs everything in this process.
JOBS ?= 2
XDIST = $(if $(filter 1,$(JOBS)),,-n $(JOBS) --dist loadfile)

## test: the fast suite (what to run often); property tests on fixed examples (tests/conftest.py)
test: $(STAMP)
	cd $(ROOT) && $(PY) -m pytest -m "not slow" -q --hypothesis-profile=ci $(XDIST)

## browser: Debian's headless Chromium for the UI test (tests/ui), installed when missing (root)
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
	@chromium --version

## test-slow: end-to-end tests (whole jobs, the dev server, the UI in Chromium); CI runs them
test-slow: $(STAMP) browser
	cd $(ROOT) && $(PY) -m pytest -m slow -q --hypothesis-profile=ci --durations=30 $(XDIST)

## test-all: the fast suite, then the slow one
test-all: test test-slow

## check: lint, format, definitions load
check: $(STAMP)
	cd $(ROOT) && $(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	cd $(ROOT) && $(VENV)/bin/dg check defs

## soak: production replayed day by day over a simulated calendar, unattended
## (TVQ_NOW moves a day at a time): DAYS=14 from 2024-03-25 is the CI span; DAYS=365 a year
## (from 2023-08-20)
DAYS ?= 14
soak: $(STAMP)
	cd $(ROOT) && $(PY) -m tvq_assets.soak --days $(DAYS) $(SOAK_ARGS)

## bench: the real jobs at 1000 symbols (D, D+1 cold and warm) and 3000 (cold): wall, CPU, peak
## memory, validation share, source and engine CPU and the ratio to the engine, beside the
## previous figures and goals; then the exchange source's refreshes at 300 markets of a local
## Binance replay (--exchange 0 skips them); BENCH_ARGS="--sizes 1000 3000 --engine" adds the
## engine stages
bench: $(STAMP)
	cd $(ROOT) && $(PY) -m benchmarks.bench $(BENCH_ARGS)

## bench-large: D and D+1 (bars, then daily) at 1000 and 10,000 symbols: seconds per stage and
## the rows of make bench at both sizes
bench-large: $(STAMP)
	cd $(ROOT) && $(PY) -m benchmarks.bench --large $(BENCH_ARGS)

## bench-executors: one daily run (100 symbols) with the in-process, multiprocess (forkserver) and Ray executors
bench-executors: $(STAMP)
	cd $(ROOT) && $(PY) -m benchmarks.bench_executors $(BENCH_ARGS)

## flow-production: the production flow now (bars, then the newest run) through the run queue
## on the services: those of `make services`, unless TV_ORCH_MODE=production is already exported
## with your own (DAGSTER_HOME, TVQ_POSTGRES_URL, MLFLOW_TRACKING_URI, RAY_ADDRESS)
flow-production: $(STAMP)
	@cd $(ROOT) && if [ "$${TV_ORCH_MODE:-}" != production ]; then \
	  env=$$($(SERVICES) env) || exit 1; eval "$$env"; fi; \
	$(PY) -m tvq_assets.cli production

## services: production mode's servers on 127.0.0.1 (Postgres, MLflow, a Ray head), idempotent
## State in $(SERVICES_DIR): Postgres (Dagster's storage, MLflow's store) on PG_PORT (5433), an MLflow tracking server on MLFLOW_PORT (5000), a
## Ray head on RAY_PORT (6379); PRODUCTION_HOME (dagster_home/production) is their DAGSTER_HOME.
## Idempotent; waits until each answers; records what it started in $(SERVICES_DIR)/services.json.
## services-env prints the exports of production mode, services-stop stops them by their pids,
## services-status shows them; all three act on the record, whatever ports they are given (other
## ports than the running services' are refused, by name).
SERVICES_DIR ?= $(ROOT)/dagster_home/services
# A variable given on make's command line or in the environment, as the option $(2); nothing when
# it is the Makefile's default or unset (the record of the last start, else the defaults, decide).
given = $(if $(filter command line environment override,$(origin $(1))),$(2) $($(1)))
SERVICES = $(PY) -m tvq_resources.services --state $(SERVICES_DIR) \
	$(call given,PRODUCTION_HOME,--production-home) $(call given,PG_PORT,--pg-port) \
	$(call given,MLFLOW_PORT,--mlflow-port) $(call given,RAY_PORT,--ray-port)
services: $(STAMP) postgres-server
	@$(SERVICES) start

## services-stop: stop the services of the record by their pids; nothing is left running
services-stop: $(STAMP)
	@$(SERVICES) stop

## services-status: each service of the record: port, pids, answers or not
services-status: $(STAMP)
	@$(SERVICES) status

## services-env: the exports of production mode for the running services (eval "$$(make -s services-env)")
services-env: $(STAMP)
	@$(SERVICES) env

## postgres-server: Debian's PostgreSQL server, installed with apt-get when no server is there
## (without the package's own cluster on port 5432: make services runs its own)
postgres-server:
	@if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 && ! command -v pg_ctl >/dev/null; then \
	  echo "installing Debian's postgresql package (the server for make services)"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	  $$sudo mkdir -p /etc/postgresql-common; \
	  echo "create_main_cluster = false" | $$sudo tee /etc/postgresql-common/createcluster.conf >/dev/null; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq \
	    -o Dpkg::Options::=--force-confold --no-install-recommends postgresql >/dev/null; \
	fi

## backfill SLEEVE=crypto FROM=2026-10-01 TO=2026-10-31: one run per as-of date (Dagster's backfills)
## The daemon of `make dev` runs them when it is up; the command itself otherwise.
backfill: $(STAMP)
	cd $(ROOT) && $(PY) -m tvq_assets.cli backfill $(SLEEVE) $(FROM) $(TO)

## clean: forget the local runs and lake (the production instance and services are left alone)
clean:
	find $(ROOT)/dagster_home -mindepth 1 -maxdepth 1 ! -name dagster.yaml ! -name production \
	  ! -name services -exec rm -rf {} +

## docs: the documentation site (MkDocs Material) into site/; --strict: a broken link or anchor fails
docs: $(STAMP)
	cd $(ROOT) && NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir $(ROOT)/site

## docs-serve: the documentation site on http://$(HOST):$(DOCS_PORT), rebuilt on every edit
DOCS_PORT ?= 8000
docs-serve: $(STAMP)
	cd $(ROOT) && NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --strict -a $(HOST):$(DOCS_PORT)

## help: this list: each target's `## target: text` comment, first line
help:
	@awk 'NR == FNR { if (match($$0, /^[A-Za-z0-9_-]+:/)) targets[substr($$0, 1, RLENGTH - 1)] = 1; next } \
	  match($$0, /^## [A-Za-z0-9_-]+( [^:]*)?: /) { name = $$2; sub(/:$$/, "", name); \
	    if (name in targets && !(name in seen)) { seen[name] = 1; \
	      text = substr($$0, RLENGTH + 1); gsub(/\$$\$$/, "$$", text); \
	      printf "  %-17s %s\n", name, text } }' $(MAKEFILE_LIST) $(MAKEFILE_LIST)
