# Developer entry points. `make demo` and `make test` are the README's two set-up commands.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-postgres compile debug test-debug test-asan lint typecheck bench soak soak-cluster fuzz clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

demo: $(PY)
	$(PY) -m pip install -q -e .
	$(VENV)/bin/prepsync demo

test: $(PY)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pytest -q -n 3

# Only the cases that need PostgreSQL (a throwaway cluster, tests/pgutil.py); CI=true makes a
# missing PostgreSQL an error here rather than a skip.
test-postgres: $(PY)
	$(PY) -m pip install -q -e '.[test]'
	CI=true $(PY) -m pytest -q -m postgres

compile: $(PY)
	$(PY) -m pip install -q -e '.[dev]'

# -O0 -g with AddressSanitizer and UBSan; Python itself is not built with ASan, so the
# runtime is preloaded and leak checking (CPython keeps memory until exit) is off.
debug: $(PY)
	PREPSYNC_DEBUG=1 $(PY) -m pip install -q --no-build-isolation -e '.[dev]'

ASAN_RUN = LD_PRELOAD=$$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \
	$(PY) -m pytest -q -p no:cacheprovider

test-debug: debug
	$(ASAN_RUN)

# The tests that drive the native engine hardest, under the sanitizers: short enough for CI.
# (Peak-RSS tests are left out: ASan's shadow memory is not the engine's.)
ASAN_TESTS = tests/test_engine_properties.py tests/test_link_tables.py tests/test_tokenizer_blocks.py \
	tests/test_dialect.py \
	tests/test_cli.py tests/test_incremental.py tests/test_parallel.py tests/test_interrupt.py \
	tests/test_io_errors.py tests/test_server_upload_reader.py tests/test_upload_copy_binary.py \
	tests/test_runs.py tests/test_server_store.py tests/test_server_pgcopy.py
test-asan: debug
	$(ASAN_RUN) $(ASAN_TESTS)

lint: $(PY)
	$(VENV)/bin/ruff check prepsync tests bench
	$(VENV)/bin/mypy

bench: $(PY)
	$(PY) -m pip install -q -e . -r bench/requirements.txt
	$(PY) bench/run.py

# Simulated days of online synchronization under SIGKILLs of agent and server and bad exports;
# the store is checked against an independent model every day (tests/soak.py).
DAYS ?= 30
SEED ?= 1
soak: $(PY)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m tests.soak --days $(DAYS) --seed $(SEED)

# Three server processes on one PostgreSQL database and one data directory, many connectors,
# SIGKILLs of servers (mid-upload, mid-commit, mid-apply) and agents; the stores checked every
# day (tests/soak_cluster.py). Starts a throwaway PostgreSQL cluster (tests/pgutil.py).
CONNECTORS ?= 6
soak-cluster: $(PY)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m tests.soak_cluster --days $(DAYS) --seed $(SEED) --connectors $(CONNECTORS)

# The fuzz target for the tokenizer and the configuration reader, for FUZZ_SECONDS: coverage-
# guided with atheris where it installs (the optional `fuzz` extra), else the seeded mutator.
FUZZ_SECONDS ?= 600
fuzz: $(PY)
	$(PY) -m pip install -q -e '.[test]'
	if $(PY) -m pip install -q -e '.[fuzz]'; then \
		$(PY) -m tests.fuzz --atheris --seconds $(FUZZ_SECONDS); \
	else \
		echo "atheris does not install here: using the seeded mutator"; \
		$(PY) -m tests.fuzz --seconds $(FUZZ_SECONDS); \
	fi

# The server's request parsing fuzzed for FUZZ_SECONDS: odd bodies, query and path parameters
# and headers to every endpoint of a real server; no 5xx, no traceback (tests/fuzz_api.py).
fuzz-api: $(PY)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m tests.fuzz_api --seconds $(FUZZ_SECONDS)

clean:
	rm -rf build prepsync/_*.c prepsync/*.so *.egg-info
