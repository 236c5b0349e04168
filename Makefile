# The two commands a newcomer needs: `make run` and `make test`.  Both create .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: run test lint fmt bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## run: run the daemon in the foreground on built-in defaults (Ctrl-C stops it)
run: $(STAMP)
	$(VENV)/bin/aaeventd run

## lint: ruff (lint + format check) and mypy --strict
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	MYPYPATH=benchmarks:. $(VENV)/bin/mypy --strict --python-version 3.11 benchmarks/*.py

## test: lint, then the whole pytest suite
test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

## fmt: apply ruff's formatter and import sorting
fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix --select I .
	$(VENV)/bin/ruff format .

## bench: run the benchmarks and rewrite docs/performance.md
bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
