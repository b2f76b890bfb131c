# kubecare — the two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION ?= 0.13.8
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup venv binaries binaries-all test-deps sandbox-deps real-node-deps demo test unit e2e lint bench clean

## setup: venv with the locked Python deps, and the sandbox binaries built from source
setup: venv binaries

venv: $(BIN)/kubecare

# uv lives inside the venv (sync --inexact keeps it); the lock file pins everything else.
$(BIN)/kubecare: pyproject.toml uv.lock
	@command -v go >/dev/null || { echo "error: Go >= 1.26 is needed to build the sandbox binaries"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || { $(BIN)/python -m pip --version >/dev/null 2>&1 || $(BIN)/python -m ensurepip -q; \
	  $(BIN)/python -m pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"; }
	$(BIN)/uv sync --frozen --inexact --extra dev --compile-bytecode --python $(BIN)/python
	@# Byte-compile our own sources too: imports are 2x faster, even where PYTHONDONTWRITEBYTECODE is set.
	$(BIN)/python -m compileall -q src
	@touch $@

binaries: venv
	$(BIN)/kubecare sandbox build

binaries-all: venv
	$(BIN)/kubecare sandbox build --all --real-nodes

## demo: set everything up, start the "demo" sandbox, show kubecare's commands on it
# (both Kubernetes minors: the demo ends with a real 1.36 -> 1.37 upgrade)
demo: venv binaries-all sandbox-deps real-node-deps
	$(BIN)/python scripts/demo.py

# The sandbox's network namespaces: ip(8) from iproute2 (unshare and nsenter are util-linux's,
# an essential package).
sandbox-deps:
	@command -v ip >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq --no-install-recommends iproute2 >/dev/null; }

# Real nodes (sandbox up --real-nodes): Debian's runc (containerd's runtime; crun refuses this
# machine's hybrid cgroups), a static busybox (the tools image) and iptables (packed into the
# kube-proxy image; nothing runs it on the machine itself). containerd, the CNI plugins and
# the kubelet are built from source by `sandbox build --real-nodes`.
real-node-deps:
	@test -x /usr/sbin/runc -a -x /bin/busybox -a -x /usr/sbin/xtables-nft-multi || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  --no-install-recommends runc busybox-static iptables >/dev/null; }

# The upgrade tests run the ssh executor against Debian's OpenSSH server (started by the test
# itself on loopback, with its own config; the package's own service is never started).
test-deps:
	@test -x /usr/sbin/sshd || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq --no-install-recommends openssh-server openssh-client >/dev/null; }

## test: lint, types, unit tests and the end-to-end tests against a real sandbox
test: venv binaries-all test-deps sandbox-deps real-node-deps lint
	$(BIN)/pytest tests

unit: venv
	$(BIN)/pytest tests/unit

e2e: venv binaries-all test-deps sandbox-deps real-node-deps
	$(BIN)/pytest tests/e2e

lint: venv
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/mypy

## bench: every benchmark (kubecare vs kubectl on the same sandbox); results in docs/benchmarks.md
bench: venv binaries-all sandbox-deps real-node-deps
	@# The drain benchmark takes both tools' peak RSS with GNU time (Debian package "time").
	@test -x /usr/bin/time || { apt-get update -qq && apt-get install -y -qq time; }
	$(BIN)/python bench/sandbox_bench.py --runs 5
	$(BIN)/python bench/drain_bench.py --runs 5
	$(BIN)/python bench/outage_bench.py --runs 7
	$(BIN)/python bench/startup_bench.py --runs 15
	$(BIN)/python bench/etcd_bench.py --runs 5
	$(BIN)/python bench/etcd_care_bench.py --runs 3 --size-mb 1100
	$(BIN)/python bench/fleet_bench.py --runs 5 --clusters 20
	$(BIN)/python bench/backup_bench.py --runs 3
	$(BIN)/python bench/upgrade_bench.py --runs 3
	$(BIN)/python bench/realnode_bench.py --runs 3
	$(BIN)/python bench/volume_bench.py --runs 5 --mib 256
	$(BIN)/python bench/volume_bench.py --runs 3 --mib 1024

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
