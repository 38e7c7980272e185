# `make run` and `make test` do all set-up on a fresh machine, then their job.
# TORCH_SPEC pins the CPU wheel; a GPU user overrides it, e.g. make test TORCH_SPEC=torch==2.13.0+cu128
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PRESET ?= default
BIN := $(VENV)/bin
STAMP := $(VENV)/.taskloc-installed

.PHONY: run test setup clean bench

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[hf,test,ray]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/taskloc run --preset $(PRESET) --out runs/$(PRESET)

test: $(STAMP)
	TASKLOC_QUIET=1 $(BIN)/python -m pytest

bench: $(STAMP)
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) runs
