# `make run` and `make test` do all set-up on a fresh machine, then their job.
# TORCH_SPEC pins the CPU wheel; a GPU user overrides it, e.g. make test TORCH_SPEC=torch==2.13.0+cu128
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PRESET ?= default
# where a study's independent jobs run: ray (one worker per core, jobs side by side) or inprocess
EXECUTOR ?= ray
BIN := $(VENV)/bin
# What `make run` needs (torch, taskloc with Hugging Face support and Ray for the executor) ...
STAMP := $(VENV)/.taskloc-installed
# ... and what the tests and benchmarks add (pytest, ruff).
TEST_STAMP := $(VENV)/.taskloc-test-installed

.PHONY: run test setup clean bench

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[hf,ray]"
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[hf,test,ray]"
	touch $(TEST_STAMP)

setup: $(TEST_STAMP)

run: $(STAMP)
	$(BIN)/taskloc run --preset $(PRESET) --out runs/$(PRESET) --executor $(EXECUTOR)

test: $(TEST_STAMP)
	TASKLOC_QUIET=1 $(BIN)/python -m pytest

bench: $(TEST_STAMP)
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) runs
