# vxlanpy: `make lab` runs the two-host overlay lab, `make test` runs ruff, mypy and the tests.
# Both set everything up first (system tools via apt where missing, a venv with the package).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSTEM_TOOLS := ping:iputils-ping iperf3:iperf3 tcpdump:tcpdump tshark:tshark ethtool:ethtool ip:iproute2 bridge:iproute2 nstat:iproute2 etcd:etcd-server etcdctl:etcd-client

.PHONY: setup system-deps test lint typecheck pytest docs lab bench microbench clean

setup: system-deps $(STAMP)

# Install the Debian packages the labs and namespace tests use, only those missing.
system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "warning: missing system packages:$$missing (not root: install them with apt-get)"; \
	  fi; \
	fi

$(STAMP): pyproject.toml setup.py $(wildcard vxlanpy/csrc/*.c vxlanpy/csrc/*.h) vxlanpy/_build_native.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	@touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check vxlanpy tests benchmarks
	$(VENV)/bin/ruff format --check vxlanpy tests benchmarks

typecheck: setup
	$(VENV)/bin/mypy

pytest: setup
	VXLANPY_REQUIRE_C=1 $(PY) -m pytest -q

test: lint typecheck pytest

# Only the documentation tests (tests/docs: the tutorial's and api.md's command blocks, reference
# tables against the program); part of pytest above. DOCS_ARGS passes pytest options, e.g. -k lab.
docs: setup
	VXLANPY_REQUIRE_C=1 $(PY) -m pytest -q tests/docs $(DOCS_ARGS)

# The main job: a two-host overlay lab (vxlanpy <-> the kernel's vxlan) in network namespaces.
# LAB_ARGS passes options through, e.g. make lab LAB_ARGS="--hosts 3 --peer vxlanpy".
lab: setup
	@if [ "$$(id -u)" != 0 ]; then echo "make lab needs root (network namespaces, TAP devices)"; exit 1; fi
	$(VENV)/bin/vxlanpy-tunnel lab $(LAB_ARGS)

microbench: setup
	$(PY) benchmarks/micro.py

# Micro (pytest-benchmark) and end-to-end (namespaces, root) benchmarks; results in docs/.
bench: setup
	$(PY) -m benchmarks micro
	$(PY) -m benchmarks e2e $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info vxlanpy/_native.* vxlanpy/_native.c .pytest_cache .mypy_cache .ruff_cache
