# make setup: create .venv and install edge-transfer with host + dev extras (quick when nothing changed)
# make demo:  setup, then the whole pipeline on built-in data
# make test:  setup, then the test suite
# make test-fast: setup, then the suite without the slow end-to-end tests
# make lint:   setup, then ruff (lint + format check) and mypy (strict on runtimes/)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-fast lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[host,dev]'
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

clean:
	rm -rf demo-output .pytest_cache build *.egg-info
