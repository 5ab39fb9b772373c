# vxlanpy: `make lab` runs the two-host overlay lab, `make test` runs ruff, mypy and the tests.
# Both set everything up first (system tools via apt where missing, a venv with the package).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSTEM_TOOLS := ping:iputils-ping iperf3:iperf3 tcpdump:tcpdump tshark:tshark ethtool:ethtool ip:iproute2 bridge:iproute2 nstat:iproute2 etcd:etcd-server etcdctl:etcd-client nft:nftables prometheus:prometheus promtool:prometheus

.PHONY: setup system-deps test lint typecheck pytest docs lab bench microbench scale fuzz soak clean

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
	@# Open vSwitch (the second peer of the tests): its package's service is kept from starting
	@# (a policy-rc.d that denies it, unless there is one), so the host's OVS stays as it is
	@command -v ovs-vswitchd >/dev/null 2>&1 || if [ "$$(id -u)" = 0 ]; then \
	  echo "installing system packages: openvswitch-switch (service not started)"; \
	  pol=/usr/sbin/policy-rc.d; own=; \
	  [ -e $$pol ] || { printf '#!/bin/sh\nexit 101\n' > $$pol; chmod 755 $$pol; own=1; }; \
	  apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends openvswitch-switch >/dev/null; rc=$$?; \
	  [ -z "$$own" ] || rm -f $$pol; exit $$rc; \
	else echo "warning: missing system package: openvswitch-switch (not root)"; fi

$(STAMP): pyproject.toml setup.py $(wildcard vxlanpy/csrc/*.c vxlanpy/csrc/*.h) vxlanpy/_build_native.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	@touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check vxlanpy tests benchmarks fuzz
	$(VENV)/bin/ruff format --check vxlanpy tests benchmarks fuzz

typecheck: setup
	$(VENV)/bin/mypy

# Two parts: every test but the load-measuring ones in parallel (pytest-xdist), then those
# (marked `alone`: the bench and scale harnesses, the soak, two floods) one at a time. One
# worker more than the cores: the tests wait on namespaces and processes more than they compute
# (2 cores: 285 s with 3 workers against 403 s with 2; 4 are no faster: 446 s against 421 s
# with 3 on the Intel host, 2026-12-02).
PYTEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
pytest: setup
	VXLANPY_REQUIRE_C=1 $(PY) -m pytest -q -n $(PYTEST_WORKERS) -m "not alone" --durations=25
	VXLANPY_REQUIRE_C=1 $(PY) -m pytest -q -m alone --durations=5

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

# Scaling (namespaces, root): VNIs, flood remotes and FDB entries against the kernel's vxlan, and
# vxlanpy's memory; scale.json, scale.md and scale.png in SCALE_OUT. SCALE_ARGS: e.g. --quick.
SCALE_OUT ?= build/scale
SCALE_ARGS ?=
scale: setup
	@if [ "$$(id -u)" != 0 ]; then echo "make scale needs root (network namespaces, TAP devices)"; exit 1; fi
	$(PY) -m benchmarks scale --out $(SCALE_OUT) $(SCALE_ARGS)

# Fuzzing (atheris): every target for FUZZ_RUNS inputs or FUZZ_SECONDS each, whichever comes
# first; the receive path's C backend built with ASan + UBSan (fuzz/build_asan.py) and run with
# atheris' sanitizer runtime preloaded. Logs and crashes under build/fuzz/.
FUZZ_RUNS ?= 1000000
FUZZ_SECONDS ?= 3600
FUZZ_TARGETS ?= config control table rx-python rx-cffi rx-compare rx-datapath
FUZZ_FLAGS ?=
ATHERIS_DIR = $$($(PY) -c 'import atheris; print(atheris.path())')
SANITIZER_ENV = LD_PRELOAD=$(ATHERIS_DIR)/asan_with_fuzzer.so VXLANPY_FUZZ_EXT=build/fuzz/asan \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:quarantine_size_mb=16:malloc_context_size=8 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

fuzz: setup
	$(PY) fuzz/build_asan.py build/fuzz/asan
	@mkdir -p build/fuzz/logs
	@for t in $(FUZZ_TARGETS); do \
	  case $$t in rx-cffi|rx-datapath) env="$(SANITIZER_ENV)";; *) env="";; esac; \
	  echo "fuzz $$t: $(FUZZ_RUNS) inputs or $(FUZZ_SECONDS) s (log build/fuzz/logs/$$t.log)"; \
	  env $$env $(PY) fuzz/run.py $$t -runs=$(FUZZ_RUNS) -max_total_time=$(FUZZ_SECONDS) \
	    -print_final_stats=1 $(FUZZ_FLAGS) > build/fuzz/logs/$$t.log 2>&1 \
	    || { tail -40 build/fuzz/logs/$$t.log; echo "fuzz $$t: FAILED"; exit 1; }; \
	  grep -E "^Done|stat::number_of_executed_units|stat::average_exec_per_sec" build/fuzz/logs/$$t.log; \
	done
	$(PY) fuzz/figures.py

# Soak: SOAK_SECONDS (10 minutes) of UDP at SOAK_KPPS through vxlanpy <-> the kernel's vxlan;
# RSS sampled, vxlanpy's tx against the peer's rx, every loss attributed, no exception (root).
SOAK_SECONDS ?= 600
SOAK_KPPS ?= 20
soak: setup
	@if [ "$$(id -u)" != 0 ]; then echo "make soak needs root (network namespaces, TAP devices)"; exit 1; fi
	@mkdir -p build
	$(PY) -m benchmarks.soak --seconds $(SOAK_SECONDS) --kpps $(SOAK_KPPS) --json build/soak.json

clean:
	rm -rf $(VENV) build *.egg-info vxlanpy/_native.* vxlanpy/_native.c .pytest_cache .mypy_cache .ruff_cache
