# recdistill — every target the README names. Python >= 3.11 on PATH as $(PYTHON).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch==2.13.0 is the CPU build that ships on these machines; override for CUDA (e.g. TORCH_SPEC="torch>=2.2,<2.15").
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install test test-slow test-integration lint demo serve worker migrate bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[train,dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check core api worker migrations tests bench

demo: install
	$(VENV)/bin/recdistill quickstart

serve: install
	$(VENV)/bin/recdistill serve

worker: install
	$(VENV)/bin/recdistill worker

migrate: install
	$(VENV)/bin/alembic upgrade head

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
