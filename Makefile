# cityedge: the two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cityedge-installed

.PHONY: setup demo test lint typecheck pytest bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/setup.sh
	touch $(STAMP)

demo: setup
	$(BIN)/cityedge demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Test folders have no __init__.py and import their conftest and helpers by bare name, so each
# folder is checked on its own, with itself (and the agent tests' shared helpers) on MYPYPATH;
# tests/contract also imports the simulator's and the fleet's test helpers.
TEST_DIRS := $(filter-out tests/__pycache__/,$(wildcard tests/*/))

typecheck: setup
	$(BIN)/mypy
	@set -e; for dir in $(TEST_DIRS); do \
		extra=""; if [ "$$dir" = tests/contract/ ]; then extra=":tests/sim:tests/fleet"; fi; \
		echo "MYPYPATH=$$dir:tests/agent$$extra $(BIN)/mypy --strict $$dir"; \
		MYPYPATH=$$dir:tests/agent$$extra $(BIN)/mypy --strict $$dir; \
	done
	MYPYPATH=tests $(BIN)/mypy --strict $(wildcard tests/*.py)

pytest: setup
	$(BIN)/pytest

test: lint typecheck pytest

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache var
