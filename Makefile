# trainjob: the front door. `make help` lists every target.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SPEC ?= examples/shapes.yaml
IMAGE ?=
NAMESPACE ?=
RUN ?=
DEST ?= models
DOCKER ?= docker
DEMO_DIR ?= demo
PYTEST_ARGS ?=
PRECISION ?= auto

.DEFAULT_GOAL := help
.PHONY: help setup demo test lint bench bench-smoke image push render submit pull clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Silent, and on stderr: `make render | kubectl apply -f -` on a fresh checkout pipes only YAML.
$(STAMP): pyproject.toml constraints.txt
	@echo "setting up $(VENV) with the versions in constraints.txt" >&2
	@$(PYTHON) -m venv $(VENV) >&2
	@$(BIN)/python -m pip install --quiet --upgrade pip >&2
	@$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]' >&2
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv and install trainjob with the pinned versions (constraints.txt)

demo: $(STAMP) ## Draw the sample data, size a run to this machine (it says how long), train it; prints where model.h5 is
	$(BIN)/trainjob demo --out $(DEMO_DIR)

test: $(STAMP) ## Set up, then run the whole suite (lint, architecture rules, tests)
	$(BIN)/ruff check job tests bench
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP) ## Ruff and the import-linter architecture contracts
	$(BIN)/ruff check job tests bench
	$(BIN)/lint-imports

bench: $(STAMP) ## Benchmark trainjob against plain Keras on generated data (under 10 min on 2 cores; PRECISION=float32 measures the float32 path); see BENCHMARKS.md
	$(BIN)/python -m bench --precision $(PRECISION)

bench-smoke: $(STAMP) ## Run the benchmark suite once on tiny data so it cannot rot (numbers mean nothing; PRECISION= as for bench)
	$(BIN)/python -m bench --quick --precision $(PRECISION)

image: ## Build the container image (IMAGE=registry/you/trainjob:tag)
	@test -n "$(IMAGE)" || { echo "make image: set IMAGE=registry.example.com/you/trainjob:0.1.0" >&2; exit 2; }
	$(DOCKER) build -t "$(IMAGE)" .

push: ## Push the container image (IMAGE=...)
	@test -n "$(IMAGE)" || { echo "make push: set IMAGE=registry.example.com/you/trainjob:0.1.0" >&2; exit 2; }
	$(DOCKER) push "$(IMAGE)"

# trainjob words a missing image as these targets take it: IMAGE=, not --image.
render submit: export TRAINJOB_MAKE_TARGET = make $@

render: $(STAMP) ## Print only the manifests for SPEC, for `| kubectl apply -f -` (IMAGE=, NAMESPACE= override the spec)
	@$(BIN)/trainjob render $(SPEC) $(if $(IMAGE),--image $(IMAGE)) $(if $(NAMESPACE),-n $(NAMESPACE))

submit: $(STAMP) ## Submit SPEC to the cluster and watch it (IMAGE=, NAMESPACE= override the spec)
	$(BIN)/trainjob submit $(SPEC) $(if $(IMAGE),--image $(IMAGE)) $(if $(NAMESPACE),-n $(NAMESPACE))

pull: $(STAMP) ## Copy run RUN from the cluster's models volume to DEST/RUN (DEST=models; IMAGE= once the cluster forgot the run)
	@test -n "$(RUN)" || { echo "make pull: set RUN=<run id> (trainjob list shows them)" >&2; exit 2; }
	$(BIN)/trainjob pull $(RUN) $(DEST) $(if $(IMAGE),--image $(IMAGE)) $(if $(NAMESPACE),-n $(NAMESPACE))

clean: ## Remove the venv, demo outputs and caches
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache bench/results.json bench/work
