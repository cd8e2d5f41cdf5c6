# The README's commands. `make run` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE ?= tiny
STAMP := $(VENV)/.installed
STACK_ENV ?= $${DGR2_HOME:-.dgr2}/stack/stack.env
NOT_IMPORTED := /tests?/|/transformers/models/(?!(auto|bert|encoder_decoder|gpt2|qwen3)/)

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export BENTOML_DO_NOT_TRACK := true
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export TOKENIZERS_PARALLELISM := false

.PHONY: install browser run test test-fast data bench serve s3-up s3-down stack-up stack-down stack-status clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --no-compile -e '.[test]'
	# pip compiles bytecode one file at a time; compileall uses every core (about 20 s less on 2).
	# A file some package ships that does not compile (a template, a test fixture) is left out, as pip would.
	# Packages' own test suites and the transformers models nothing here loads are never imported:
	# skipping them takes a third off the compile (54 -> 39 s on 2 cores).
	$(BIN)/python -m compileall -q -j 0 -x '$(NOT_IMPORTED)' $(VENV)/lib > /dev/null || true
	touch $(STAMP)

install: $(STAMP)

# With the local stack up (make stack-up), its env file points MLflow, Prefect and S3 at it.
run: $(STAMP)
	if [ -f $(STACK_ENV) ]; then source $(STACK_ENV); fi; $(BIN)/dgr2 train-rl --config configs/$(PROFILE).yaml

# The report tests render pages in a real browser: Debian's chromium (installing it needs root).
browser:
	@command -v chromium >/dev/null 2>&1 || apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } \
	  || echo "warning: could not install chromium; the page-rendering tests will fail (install Debian's chromium)" >&2

test: $(STAMP) browser
	$(BIN)/python -m pytest -q -ra tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not integration and not slow" tests

bench: $(STAMP)
	$(BIN)/python benchmarks/data_flow.py --config configs/$(PROFILE).yaml

# The registered champion (DGR2_SERVE_ALIAS=challenger: the challenger) and its AR teacher, packaged
# into a Bento (store: $DGR2_HOME/bentoml) and served on 127.0.0.1:$DGR2_SERVE_PORT (default 3000);
# DGR2_SHADOW_FRACTION=0.1 also packages the challenger and shadows that share of requests with it.
serve: $(STAMP)
	if [ -f $(STACK_ENV) ]; then source $(STACK_ENV); fi; \
	export BENTOML_HOME=$${BENTOML_HOME:-$$(realpath -m $${DGR2_HOME:-.dgr2})/bentoml}; \
	alias=$${DGR2_SERVE_ALIAS:-champion}; port=$${DGR2_SERVE_PORT:-3000}; \
	shadow=$${DGR2_SHADOW_FRACTION:+--set serving.shadow_fraction=$$DGR2_SHADOW_FRACTION}; \
	packaged=$$($(BIN)/python -m flows.package --config configs/$(PROFILE).yaml --alias $$alias $$shadow) \
	  || { echo "make serve: nothing to serve (see above); DGR2_SERVE_ALIAS=challenger serves the challenger" >&2; exit 2; }; \
	bento=$$(echo "$$packaged" | tail -n 1 | $(BIN)/python -c 'import json, sys; print(json.load(sys.stdin)["bento_tag"])'); \
	echo "serving $$alias ($$packaged) at http://127.0.0.1:$$port  (POST /rerank, /readyz, /metrics)"; \
	exec $(BIN)/bentoml serve $$bento --host 127.0.0.1 --port $$port

s3-up: $(STAMP)
	PATH=$(BIN):$$PATH infra/local/s3-up.sh

s3-down:
	infra/local/s3-down.sh

# S3, MLflow and Prefect servers on 127.0.0.1, and an env file for clients (.dgr2/stack/stack.env);
# DGR2_STACK_PROFILE=production puts MLflow and Prefect on Postgres.
stack-up: $(STAMP)
	PATH=$(BIN):$$PATH infra/local/stack-up.sh

stack-down:
	infra/local/stack-down.sh

# The script exits 3 when a server is down (make then reports an error).
stack-status:
	infra/local/stack-status.sh

clean:
	rm -rf .dgr2 $(VENV)
