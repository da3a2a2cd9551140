# The two commands of the README. Each builds or reuses .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## replay the embedded synthetic market through the baseline strategy
	$(BIN)/scalpd replay

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint  ## lint, format check, then the whole test suite
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/scalpd bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
