# tonebridge-dr developer entry points. `make demo` and `make test` do all set-up.
SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The compiled front door of wal-push / wal-fetch (next to the venv's python, where
# `restore postgres` looks for it).
WALFAST := $(BIN)/tonebridge-dr-walfast
WALFAST_SRC := operator/tonebridge_dr/runner/engines/postgres/wal/walfast.c

.PHONY: deps venv test unit lint crds controlplane demo demo-drill bench e2e-kind image clean

# Debian packages (PostgreSQL, Redis, GnuPG, ...): a no-op when present.
deps:
	bash hack/install-deps.sh

venv: $(STAMP) $(WALFAST)

# The venv is built from the system Python so that other OS users (the
# PostgreSQL server's, for archive_command) can execute the CLI.
$(STAMP): pyproject.toml | deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

$(WALFAST): $(WALFAST_SRC) | $(STAMP)
	$(CC) -O2 -Wall -Wextra -Werror -std=c11 -o $@ $<

controlplane: deps
	bash hack/controlplane/build.sh

crds: venv
	$(BIN)/python -m tonebridge_dr.api.crdgen --out crds
	cp crds/*.yaml charts/tonebridge-dr/crds/

lint: venv
	$(BIN)/ruff check operator tests bench hack
	$(BIN)/lint-imports
	$(BIN)/mypy

test: venv controlplane lint
	TONEBRIDGE_DR_CONTROLPLANE_DIR="$$(bash hack/controlplane/build.sh 2>/dev/null | tail -n1)" \
	  $(BIN)/pytest -m 'not kind' $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

demo: venv controlplane
	TONEBRIDGE_DR_CONTROLPLANE_DIR="$$(bash hack/controlplane/build.sh 2>/dev/null | tail -n1)" \
	  bash hack/demo.sh

# The runbook drill: DROP DATABASE, find it with wal-inspect, restore to just before it.
demo-drill: venv controlplane
	TONEBRIDGE_DR_CONTROLPLANE_DIR="$$(bash hack/controlplane/build.sh 2>/dev/null | tail -n1)" \
	  bash hack/demo-drill.sh

bench: venv
	$(BIN)/python -m bench $(BENCH_ARGS)

e2e-kind: venv
	$(BIN)/pytest -m kind $(PYTEST_ARGS)

# The operator + runner image (Dockerfile). Needs Docker (or DOCKER=podman); no test
# needs it. Push it and set the chart's image.repository / image.tag.
IMAGE ?= tonebridge-dr:dev
DOCKER ?= docker
image:
	$(DOCKER) build -t $(IMAGE) .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
