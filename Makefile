# kubecare — the two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION ?= 0.13.8
VENV := .venv
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup venv binaries demo test unit e2e lint bench clean

## setup: venv with Python deps (uv + committed lock), and the sandbox binaries built from source
setup: venv binaries

venv: $(BIN)/kubecare

$(BIN)/kubecare: pyproject.toml uv.lock
	@command -v go >/dev/null || { echo "error: Go >= 1.26 is needed to build the sandbox (apt-get install golang-go, or https://go.dev/dl)"; exit 1; }
	@test -x "$(UV)" || $(PYTHON) -m pip install --quiet --user "uv==$(UV_VERSION)" || $(PYTHON) -m pip install --quiet "uv==$(UV_VERSION)"
	@UV=$$(command -v uv || echo $(HOME)/.local/bin/uv); $$UV sync --frozen --extra dev --python $(PYTHON)
	@touch $@

binaries: venv
	$(BIN)/kubecare sandbox build

## demo: set everything up, start a sandbox, show the maintenance commands on it
demo: setup
	$(BIN)/python scripts/demo.py

## test: lint, types, unit tests and the end-to-end tests against a real sandbox
test: setup lint
	$(BIN)/pytest -q tests

unit: venv
	$(BIN)/pytest -q tests/unit

lint: venv
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/sandbox_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
