# tvq — every target bootstraps its own pinned environment on first use (.tools/uv, then .venv).
SHELL := bash
ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
export DAGSTER_HOME := $(ROOT)/dagster_home
export UV_PYTHON_DOWNLOADS := never
UV_VERSION := 0.13.8
UV := $(ROOT)/.tools/bin/uv
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.synced-$(shell cat $(ROOT)/uv.lock $(ROOT)/pyproject.toml | cksum | cut -d' ' -f1)
HOST ?= 127.0.0.1
PORT ?= 3000

.PHONY: setup demo dev test test-slow test-all check bench bench-large backfill flow-production clean mlflow-ui browser

setup: $(STAMP)

$(UV):
	python3 -m venv $(ROOT)/.tools
	$(ROOT)/.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(STAMP): $(ROOT)/pyproject.toml $(ROOT)/uv.lock | $(UV)
	cd $(ROOT) && $(UV) sync --locked --quiet
	rm -f $(VENV)/.synced-*; touch $@

## demo: refresh the bars and materialise the newest run of every sleeve on the synthetic market
demo: $(STAMP)
	TVQ_UI_URL=http://$(HOST):$(PORT) $(PY) -m tvq_assets.cli demo

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
MLFLOW_PORT ?= 5000
mlflow-ui: $(STAMP)
	@store="$${MLFLOW_TRACKING_URI:-sqlite:///$(DAGSTER_HOME)/mlflow/mlflow.db}"; \
	case "$$store" in http*) echo "runs are on the tracking server: open $$store"; exit 0;; esac; \
	mkdir -p $(DAGSTER_HOME)/mlflow; \
	echo "MLflow UI on http://$(HOST):$(MLFLOW_PORT) (store: $$store)"; \
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow server --backend-store-uri "$$store" \
	  --artifacts-destination $(DAGSTER_HOME)/mlflow/artifacts -h $(HOST) -p $(MLFLOW_PORT) --workers 1

## test: the fast suite (what to run often)
test: $(STAMP)
	cd $(ROOT) && $(PY) -m pytest -m "not slow" -q

## browser: Debian's headless Chromium for the UI test (tests/ui), installed when missing (root)
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
	@chromium --version

## test-slow: end-to-end tests (whole jobs, the dev server, the UI in Chromium); CI runs them
test-slow: $(STAMP) browser
	cd $(ROOT) && $(PY) -m pytest -m slow -q

test-all: test test-slow

## check: lint, format, definitions load
check: $(STAMP)
	cd $(ROOT) && $(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	cd $(ROOT) && $(VENV)/bin/dg check defs

## bench: the real jobs at 1000 symbols (D, D+1 cold and warm) and 3000 (cold), one table with the
## previous figures and goals; BENCH_ARGS="--sizes 1000 3000 --engine" adds the engine stages
bench: $(STAMP)
	cd $(ROOT) && $(PY) -m tests.bench $(BENCH_ARGS)

## bench-large: refresh_bars + daily at 1000 and 10,000 symbols, seconds and memory per stage
bench-large: $(STAMP)
	cd $(ROOT) && $(PY) -m tests.bench --large $(BENCH_ARGS)

## flow-production: the production flow now (bars, then the newest run), through the run queue
flow-production: $(STAMP)
	cd $(ROOT) && TVQ_UI_URL=http://$(HOST):$(PORT) $(PY) -m tvq_assets.cli production

## backfill SLEEVE=crypto FROM=2026-10-01 TO=2026-10-31: one run per as-of date (`make dev` runs them)
backfill: $(STAMP)
	cd $(ROOT) && TVQ_UI_URL=http://$(HOST):$(PORT) $(PY) -m tvq_assets.cli backfill $(SLEEVE) $(FROM) $(TO)

clean:
	find $(DAGSTER_HOME) -mindepth 1 ! -name dagster.yaml -exec rm -rf {} +
