# Two commands from a fresh clone: `make run` (default experiment) and `make test` (the suite).
# Both create .venv when missing and install what they need (`make run` the core package,
# `make test` also the extras the suite exercises, at the versions in tests/constraints.txt);
# both are idempotent.
PY      := .venv/bin/python
STAMP   := .venv/.installed
DEV     := .venv/.installed-dev
TRITON  := .venv/.triton
SAELENS := .venv-saelens/.installed
SAELENS_PY := .venv-saelens/bin/python
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: run test test-slow test-gpu report bench bench-gpu gpu-check bench-gpu-site bench-paper-gpu bench-experiment paper lint format clean

$(PY):
	python3 -m venv .venv

# torch first: the pinned CPU wheel, so no multi-GB CUDA build is pulled in by a dependency.
# The core install: every synthetic experiment, no language-model or LLM-client packages.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

# What the suite (and the paper's scikit-learn baseline) needs: the lm, autointerp and sklearn
# extras, pytest and ruff.
$(DEV): $(STAMP) tests/constraints.txt
	$(PY) -m pip install --quiet -c tests/constraints.txt -e '.[dev]'
	touch $(DEV)

run: $(STAMP)
	$(PY) -m sparsegap device=cpu

# The tests run the fused step's Triton kernels through Triton's CPU interpreter: Triton itself
# (Linux x86-64 wheels only) comes with CUDA builds of torch, not with the CPU wheel, so the test
# set-up adds it where it is missing (tests/test_fused.py skips on other platforms).
$(TRITON): $(DEV)
	@if ! $(PY) -c "import triton" 2>/dev/null && [ "$$(uname -s)-$$(uname -m)" = Linux-x86_64 ]; \
	then $(PY) -m pip install --quiet triton==3.9.0; fi
	touch $(TRITON)

# SAELens 6 requires transformer-lens < 4 and the suite's .venv has 4.x, so SAELens's own classes
# and the transformer-lens 3.x side of the model adapter run in a second venv (tests/test_pretrained.py
# calls it as SAELENS_PYTHON, in a subprocess). It sees .venv's packages through a .pth file that
# adds .venv's site-packages (with its own .pth files: the editable sparsegap) *after* its own, so
# the transformer-lens 3.x installed here shadows .venv's 4.x, and pip installs only what .venv
# lacks (torch and transformers are .venv's; pip leaves packages outside its venv alone).
$(SAELENS): $(DEV) tests/constraints-saelens.txt
	$(PY) -m venv --clear .venv-saelens
	shared=$$($(PY) -c "import sysconfig; print(sysconfig.get_path('purelib'))"); \
	own=$$($(SAELENS_PY) -c "import sysconfig; print(sysconfig.get_path('purelib'))"); \
	echo "import site; site.addsitedir('$$shared')" > "$$own/sparsegap-venv.pth"
	$(SAELENS_PY) -m pip install --quiet -c tests/constraints-saelens.txt sae-lens transformer-lens
	touch $(SAELENS)

# `paper`-marked tests (the whole `make paper QUICK=1` path, minutes) run in test-slow only.
test: $(TRITON) $(SAELENS)
	SAELENS_PYTHON=$(CURDIR)/$(SAELENS_PY) $(PY) -m pytest -q -m "not gpu and not paper"

test-slow: $(TRITON)
	$(PY) -m pytest -q -m slow

test-gpu: $(TRITON)
	$(PY) -m pytest -q -m gpu

# Tidy CSV, summary table and figures of a multirun (default: the newest under outputs/multirun):
#   make report [DIR=outputs/multirun/<time>-<experiment>] → DIR/report/
DIR ?= $(lastword $(sort $(wildcard outputs/multirun/*)))
report: $(STAMP)
	@test -n "$(DIR)" || { echo "make report DIR=<run or multirun folder>"; exit 2; }
	$(PY) -m sparsegap.report $(DIR)

# Then the pretrained-gap methods' CPU throughput (d = 768, 4,096 latents, 4,096 tokens; ms per
# 1,000 tokens of the encoder, NNLS refit, FISTA, OMP and ITO).
bench: $(STAMP)
	$(PY) -m sparsegap.bench
	$(PY) -m sparsegap.pretrained.bench

# The first Python whose torch sees a CUDA GPU: .venv's, else the machine's own (a GPU machine's
# image, say, offline, with the framework's pure-Python packages carried in .bench-site).
CUDA_PY = $(shell for c in $(PY) python3 python; do \
	$$c -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null \
	&& { echo $$c; break; }; done)

# Language-model path on a GPU (about 4 minutes): SAE 768→24,576 and MLP training steps per
# second, harvesting tokens/s; then the pretrained-gap methods on a 24,576-latent SAE (ms per
# 1,000 tokens = s per 1 M tokens). No install step (it runs offline on a lent machine): CUDA_PY
# runs it with .venv's other packages.
bench-gpu:
	@py="$(CUDA_PY)"; if [ -z "$$py" ]; then echo "no CUDA torch found: CPU smoke test (--small)"; \
	  $(PY) -m sparsegap.bench.gpu --small; else $$py -m sparsegap.bench.gpu $(ARGS) && \
	  $$py -m sparsegap.pretrained.bench --device cuda --latents 24576 --tokens 65536 --batch 8192; fi

# A GPU machine's whole check in one command, offline, no install (bench-gpu's --budget bounds it):
# the `gpu`-marked tests (only their files are collected: a CUDA image may lack the packages of
# others, e.g. openai's compiled ones), then bench-gpu with the per-kernel profile of the fastest
# fused step.
# On a machine without the .venv: `make bench-gpu-site` first, where pip works, and bring
# .bench-site along. ARGS go to bench.gpu (labels to run or skip, '|'-separated, e.g.
# ARGS='--only "fused step|MLP" --skip compile --budget 200').
gpu-check:
	@py="$(CUDA_PY)"; test -n "$$py" || { echo "gpu-check: no Python here whose torch sees a CUDA GPU"; exit 2; }; \
	echo "gpu-check: $$py"; status=0; \
	PYTHONPATH="$(CURDIR)/.bench-site$${PYTHONPATH:+:$$PYTHONPATH}" $$py -m pytest -q -p no:cacheprovider \
	  -m gpu $$(grep -l "mark.gpu" tests/test_*.py) || status=$$?; \
	$$py -m sparsegap.bench.gpu --profile $(ARGS) || status=$$?; exit $$status

# The whole paper on one GPU, measured, in one command (≤ 9 minutes on an H100, offline, no
# install): captured vs uncaptured training checked equal, per-step times of both, the full
# `unknown` preset and the regimes K = 3 slice with several jobs per GPU, and a projection of
# `make paper DEVICE=cuda`; writes outputs/bench-paper-gpu/paper_gpu.{json,md} for
# docs/RESULTS.md. ARGS go to sparsegap.bench.paper_gpu (e.g. ARGS='--jobs 4,8,12 --budget 400').
bench-paper-gpu:
	@py="$(CUDA_PY)"; test -n "$$py" || { echo "bench-paper-gpu: no Python here whose torch sees a CUDA GPU"; exit 2; }; \
	PYTHONPATH="$(CURDIR)/.bench-site$${PYTHONPATH:+:$$PYTHONPATH}" $$py -m sparsegap.bench.paper_gpu $(ARGS)

# For a GPU machine whose Python is not the .venv's (another version, no .venv): copy the
# pure-Python distributions the framework, its GPU tests and transformer-lens import (about 21 MiB,
# listed in bench.gpu.SITE_DISTRIBUTIONS) into .bench-site, which bench-gpu and gpu-check add to
# the path; carry .bench-site along.
bench-gpu-site: $(DEV)
	$(PY) -m sparsegap.bench.gpu --write-site .bench-site

# The paper's whole unknown-scenario experiment (Fig. 4: 5 encoders × 5 replicas × 40,000 steps),
# two jobs at a time (longest first) on the local cores, one torch thread each; prints the wall time.
bench-experiment: $(STAMP)
	start=$$(date +%s); $(PY) -m sparsegap -m scenario=unknown \
	  encoder=mlp_256,sparse_coding,sae_ito,mlp,sae \
	  hydra/launcher=joblib hydra.launcher.n_jobs=2 device.threads=1 progress=false; \
	echo "whole unknown experiment: $$(( $$(date +%s) - start )) s wall"

# Every preset of the paper (§4, App. C–F) at the paper's settings as joblib multiruns (2 jobs ×
# 1 thread) into PAPER_DIR/<preset>, a report per sweep, then docs/REPRODUCTION.md and its figures.
# QUICK=1: few steps, 2 replicas, small grids, written under PAPER_DIR/docs (docs/ is untouched).
# DEVICE=cuda: every job on the GPU as captured CUDA graphs, JOBS_PER_GPU jobs sharing it at once.
PAPER_DIR ?= outputs/paper$(if $(QUICK),-quick)
PAPER_DOCS ?= $(if $(QUICK),$(PAPER_DIR)/docs,docs)
DEVICE ?= cpu
JOBS_PER_GPU ?= 4
paper: $(DEV)
	start=$$(date +%s); $(PY) -m sparsegap.report.reproduction run $(PAPER_DIR) \
	  $(if $(QUICK),--quick) --device $(DEVICE) --jobs-per-gpu $(JOBS_PER_GPU) \
	  --docs $(PAPER_DOCS) || exit $$?; \
	echo "make paper$(if $(QUICK), QUICK=1)$(if $(filter cuda,$(DEVICE)), DEVICE=cuda): $$(( $$(date +%s) - start )) s wall"

lint: $(DEV)
	$(PY) -m ruff check sparsegap tests
	$(PY) -m ruff format --check sparsegap tests

format: $(DEV)
	$(PY) -m ruff format sparsegap tests
	$(PY) -m ruff check --fix sparsegap tests

clean:
	rm -rf .venv .venv-saelens outputs/runs outputs/multirun
