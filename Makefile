# Developer entry points. `make demo` and `make test` are the README's two set-up commands.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test compile debug test-debug lint typecheck bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

demo: $(PY)
	$(PY) -m pip install -q -e .
	$(VENV)/bin/prepsync demo

test: $(PY)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pytest -q

compile: $(PY)
	$(PY) -m pip install -q -e '.[dev]'

# -O0 -g with AddressSanitizer and UBSan; Python itself is not built with ASan, so the
# runtime is preloaded and leak checking (CPython keeps memory until exit) is off.
debug: $(PY)
	PREPSYNC_DEBUG=1 $(PY) -m pip install -q --no-build-isolation -e '.[dev]'

test-debug: debug
	LD_PRELOAD=$$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \
		$(PY) -m pytest -q -p no:cacheprovider

lint: $(PY)
	$(VENV)/bin/ruff check prepsync tests bench
	$(VENV)/bin/mypy

bench: $(PY)
	$(PY) -m pip install -q -e . -r bench/requirements.txt
	$(PY) bench/run.py

clean:
	rm -rf build prepsync/_*.c prepsync/*.so *.egg-info
