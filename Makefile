# Two commands from a fresh clone: `make run` (default experiment) and `make test` (the suite).
# Both create .venv when missing and install the pinned dependencies; both are idempotent.
PY      := .venv/bin/python
STAMP   := .venv/.installed
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: run test test-slow test-gpu bench lint format clean

$(PY):
	python3 -m venv .venv

# torch first: the pinned CPU wheel, so no multi-GB CUDA build is pulled in by a dependency.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m sparsegap device=cpu

test: $(STAMP)
	$(PY) -m pytest -q -m "not gpu"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu

bench: $(STAMP)
	$(PY) -m sparsegap.bench

lint: $(STAMP)
	$(PY) -m ruff check sparsegap tests
	$(PY) -m ruff format --check sparsegap tests

format: $(STAMP)
	$(PY) -m ruff format sparsegap tests
	$(PY) -m ruff check --fix sparsegap tests

clean:
	rm -rf .venv outputs/runs outputs/multirun
