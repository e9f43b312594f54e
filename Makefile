# Two commands from a fresh clone: `make run` (default experiment) and `make test` (the suite).
# Both create .venv when missing and install the pinned dependencies; both are idempotent.
PY      := .venv/bin/python
STAMP   := .venv/.installed
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: run test test-slow test-gpu report bench bench-experiment lint format clean

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

# Tidy CSV, summary table and figures of a multirun (default: the newest under outputs/multirun):
#   make report [DIR=outputs/multirun/<time>-<experiment>] → DIR/report/
DIR ?= $(lastword $(sort $(wildcard outputs/multirun/*)))
report: $(STAMP)
	@test -n "$(DIR)" || { echo "make report DIR=<run or multirun folder>"; exit 2; }
	$(PY) -m sparsegap.report $(DIR)

bench: $(STAMP)
	$(PY) -m sparsegap.bench

# The paper's whole unknown-scenario experiment (Fig. 4: 5 encoders × 5 replicas × 40,000 steps),
# two jobs at a time (longest first) on the local cores, one torch thread each; prints the wall time.
bench-experiment: $(STAMP)
	start=$$(date +%s); $(PY) -m sparsegap -m scenario=unknown \
	  encoder=mlp_256,sparse_coding,sae_ito,mlp,sae \
	  hydra/launcher=joblib hydra.launcher.n_jobs=2 device.threads=1 progress=false; \
	echo "whole unknown experiment: $$(( $$(date +%s) - start )) s wall"

lint: $(STAMP)
	$(PY) -m ruff check sparsegap tests
	$(PY) -m ruff format --check sparsegap tests

format: $(STAMP)
	$(PY) -m ruff format sparsegap tests
	$(PY) -m ruff check --fix sparsegap tests

clean:
	rm -rf .venv outputs/runs outputs/multirun
