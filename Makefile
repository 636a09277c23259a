# Every target works on a fresh clone: the virtual environment is (re)built from pyproject.toml when missing or stale.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
# 2 workers suit the 2-core CI machine (each gets one torch thread: tests/conftest.py); WORKERS=auto for one per core
WORKERS ?= 2
XDIST := $(if $(filter 0,$(WORKERS)),,-n $(WORKERS) --dist worksteal)
export NO_ALBUMENTATIONS_UPDATE := 1
export HYDRA_FULL_ERROR ?= 1

.DEFAULT_GOAL := help

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## .*$$' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "\033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP) ## Create or refresh .venv from pyproject.toml

test: $(STAMP) ## Run the whole test suite on 2 pytest-xdist workers (WORKERS=auto: one per core, WORKERS=0: serial)
	$(BIN)/pytest tests $(XDIST)

test-fast: $(STAMP) ## Run the tests not marked slow (no subprocess, a few epochs at most, small networks)
	$(BIN)/pytest tests -m "not slow" $(XDIST)

train: $(STAMP) ## Train with the defaults; pass Hydra overrides as ARGS="..."
	$(BIN)/python src/train.py $(ARGS)

eval: $(STAMP) ## Evaluate a checkpoint: ARGS="ckpt_path=..."
	$(BIN)/python src/eval.py $(ARGS)

export: $(STAMP) ## Export a checkpoint to ONNX (+ metadata): ARGS="ckpt_path=... [output=model.onnx]"
	$(BIN)/python src/export.py $(ARGS)

serve: $(STAMP) ## Serve a checkpoint over HTTP (FastAPI): ARGS="ckpt_path=... [port=8080]"
	$(BIN)/python src/serve.py $(ARGS)

smoke: $(STAMP) ## Train the offline smoke experiment end to end
	$(BIN)/python src/train.py experiment=smoke $(ARGS)

lint: $(STAMP) ## Lint, check formatting (ruff), the one-way import layers (import-linter), the Dockerfile (hadolint)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

format: $(STAMP) ## Format and auto-fix with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

results: $(STAMP) ## Reproduce docs/results.md: 5 seeds of kermany_resnet18_budget, eval each (+ external sets), summarise
	PYTHON=$(BIN)/python bash scripts/kermany_results.sh

clean-logs: ## Delete logs/
	rm -rf logs/

.PHONY: help install test test-fast train eval export serve smoke lint format results clean-logs
