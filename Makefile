# Two entry points, each doing its own set-up: `make run` (the workflow) and `make test`.
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
PYTHON ?= python3
INSTALLED := $(VENV)/.installed

.PHONY: run test lint clean gpu-check

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: $(INSTALLED)
	PATH="$(BIN):$$PATH" snakemake --cores all $(ARGS)

test: $(INSTALLED)
	PATH="$(BIN):$$PATH" pytest $(ARGS)

# The device check: every code path on the GPU, throughput, host syncs, calibration (5 min).
gpu-check: $(INSTALLED)
	$(BIN)/python benchmarks/gpu_check.py $(ARGS)

lint: $(INSTALLED)
	PATH="$(BIN):$$PATH" ruff check src tests benchmarks
	PATH="$(BIN):$$PATH" snakefmt --check Snakefile workflow/rules
	PATH="$(BIN):$$PATH" snakemake --lint

clean:
	rm -rf results logs .snakemake
