# Two commands: `make demo` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV ?= .venv
# torch goes in first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/distill run

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks

test: lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
