# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv when missing and install both
# packages editable with the dev tools, the SDK's Ray extra (the tests run a Ray cluster) and the report's matplotlib
# (the SDK's `report` extra; the server's own install never pulls it). torch is installed
# first and pinned: it is the CPU build on this machine's disk, and letting opacus pull torch in would fetch a
# multi-GB CUDA build instead. Installing the SDK compiles its native hash to curve and X25519 (clients/python/setup.py)
# in place with the machine's C compiler, and installing the server compiles attribution's kernels (setup.py); without
# one they are skipped and the Python and numpy paths run (cleanroom_client.curve.NATIVE, X25519_NATIVE,
# cleanroom.analytics.credit_sums.NATIVE).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test check lint typecheck protos protos-check unit system e2e browser clean bench-openmined-venv

# the extensions' C files (both setup.py's SOURCES and HEADERS) by pattern, so that a new one needs no line here
$(STAMP): pyproject.toml setup.py clients/python/pyproject.toml clients/python/setup.py \
		$(wildcard clients/python/cleanroom_client/*.c clients/python/cleanroom_client/*.h cleanroom/analytics/*.c cleanroom/analytics/*.h)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e "clients/python[ray,report]" -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cleanroom demo
	$(BIN)/cleanroom demo --platforms 2 --brand-users 5000

# Two worker processes (pytest-xdist), each test module in one of them (its module fixtures built once): most
# tests wait on servers, members and subprocesses, so two cores take about 6.5 minutes instead of 10.5.
test: $(STAMP) check browser
	$(BIN)/pytest -n 2 --dist loadfile

# The report tests open the HTML reports in headless Chromium, the Chinese one with Noto Sans CJK, and the X25519
# test runs the portable ladder under Valgrind (constant time in the key): Debian's packages (needs root, as on CI
# here).
browser:
	@command -v chromium >/dev/null 2>&1 && command -v valgrind >/dev/null 2>&1 && fc-list -q ":lang=zh" || \
		(apt-get update -q && apt-get install -y -q chromium fonts-noto-cjk valgrind)

check: protos-check lint typecheck

lint: $(STAMP)
	$(BIN)/buf lint protos
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py
	$(BIN)/python scripts/gen_vectors.py

protos-check: $(STAMP)
	$(BIN)/python scripts/gen_protos.py --check
	$(BIN)/python scripts/gen_vectors.py --check

unit: $(STAMP)
	$(BIN)/pytest tests/unit

# Real gRPC over TLS on loopback: the SDK and the servicers against a running server.
system: $(STAMP)
	$(BIN)/pytest tests/system

e2e: $(STAMP)
	$(BIN)/pytest tests/e2e

# OpenMined's PSI, the PSI benchmark's peer, pins another protobuf: it gets a venv of its own.
OPENMINED_VENV := benchmarks/.venv-openmined
bench-openmined-venv: $(OPENMINED_VENV)/bin/python
$(OPENMINED_VENV)/bin/python:
	$(PYTHON) -m venv $(OPENMINED_VENV)
	$(OPENMINED_VENV)/bin/python -m pip install -q openmined-psi==2.0.6

clean:
	rm -rf $(VENV) $(OPENMINED_VENV) .pytest_cache .mypy_cache .ruff_cache
