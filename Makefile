# mlplatform — the two commands a user needs: `make demo` and `make test`.
# Everything is installed here, into .venv; nothing by hand.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# PyTorch goes in first and pinned, so the project's `torch>=2.4` is already satisfied and pip
# never pulls the multi-GB CUDA build on a CPU machine. On a machine without a local CPU wheel,
# point pip at PyTorch's CPU wheel index with TORCH_PIP_ARGS="--index-url <cpu index>".
TORCH_SPEC     ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS    ?=

export RAY_AUTH_MODE ?= token

.PHONY: install demo test test-unit test-integration lint clean redis

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[dev]'
	@$(BIN)/python -c 'import torch; assert not torch.version.cuda or torch.cuda.is_available(), "a CUDA torch was installed on a machine without a GPU"'
	touch $(STAMP)

demo: install
	$(BIN)/mlp demo --project examples/fraud

test: install redis
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: install redis
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

# The online-store tests start a real redis-server. Best effort: without it they are skipped.
redis:
	@if ! command -v redis-server >/dev/null 2>&1; then \
	  SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  echo "installing Debian's redis-server (used by the online-store tests)"; \
	  ( $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q redis-server ) \
	    || echo "WARNING: could not install redis-server; the Redis online-store tests will be" \
	            "skipped. Install it by hand (e.g. 'apt-get install redis-server') to run them."; \
	fi

lint: install
	$(BIN)/ruff check mlplatform tests jobs benchmarks

clean:
	rm -rf $(VENV) .mlplatform .pytest_cache
