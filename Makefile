# One command runs everything: `make test` creates .venv, installs, lints and runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test venv lint unit clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[server,dev,bench]'
	touch $@

venv: $(BIN)/.installed

lint: venv
	$(BIN)/ruff check agent server tests benchmarks examples
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest tests/unit

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .cache .pytest_cache
