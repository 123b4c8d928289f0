# torchvalley — the README's two commands are `make demo` and `make test`.
# Every target creates .venv when it is missing and installs the project into it,
# pinned by constraints.txt (CPU torch==2.13.0 from this workplace's local wheel).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The install is redone when pyproject.toml or constraints.txt change.
STAMP := $(VENV)/.torchvalley-installed
PYTEST_WORKERS ?= 2
# Anchors whose metadata asks for torchvision (no CPU wheel for torch 2.13 here; none of them
# imports it), and torch-optimizer (the A2Grad reference code, loaded without its __init__, which
# needs pytorch_ranger): installed without dependencies; their real ones are in the anchors extra.
NO_DEPS_ANCHORS := laplace-torch backpack-for-pytorch curvlinops-for-pytorch torch-optimizer
DEMO_OUT ?= reports/demo

.PHONY: help install demo test test-slow bench lint format clean

help:
	@echo "make demo       set up and run the demo (MNIST-1D CNN, every family; two spirals; 3 seeds)"
	@echo "make test       set up and run the test suite (fast; slow statistical checks excluded)"
	@echo "make test-slow  the slow statistical / benchmark checks (marker: slow)"
	@echo "make bench      the optimizer step-overhead benchmark (~11M parameters)"
	@echo "make lint       ruff check + format check"

$(PY):
	$(PYTHON) -m venv $(VENV)

# The anchors extra (geoopt, pytorch_optimizer, posteriors, PyHessian, brevitas, laplace-torch),
# rl (gymnasium) and cluster (optuna, ray, PostgreSQL via pgserver) are installed too: the
# tests that compare against those libraries run in `make test` and in CI, not only in `make bench`.
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e ".[bench,dev,integrations,anchors,rl,cluster]"
	$(PIP) install --quiet --no-deps -c constraints.txt $(NO_DEPS_ANCHORS)
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m torchvalley demo --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n $(PYTEST_WORKERS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) benchmarks/step_overhead.py --out reports/step_overhead.md --json reports/step_overhead.json

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m ruff format --check src tests benchmarks examples

format: $(STAMP)
	$(PY) -m ruff format src tests benchmarks examples
	$(PY) -m ruff check --fix src tests benchmarks examples

clean:
	rm -rf $(VENV) reports .pytest_cache .ruff_cache build dist src/*.egg-info
