# The two commands a newcomer types. Each creates the virtualenv when it is missing.
#   make run    data -> tokenizer -> training -> a sample chat  (`guppy run`)
#   make test   the test suite and the linter (what CI runs)

VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin

.PHONY: run test setup clean

run: setup
	$(BIN)/guppy run

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

setup: $(VENV)/.installed

# torch first, pinned: it installs the CPU build from a local wheel where one is offered,
# and an unpinned torch would pull a multi-GB CUDA build instead.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,serve]"
	touch $@

clean:
	rm -rf $(VENV) data runs
