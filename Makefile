# recdistill — every target the README names. Python >= 3.11 on PATH as $(PYTHON).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch==2.13.0 is the CPU build that ships on these machines; override for CUDA (e.g. TORCH_SPEC="torch>=2.2,<2.15").
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# Where `make demo` (recdistill quickstart) writes the server's pid: <RECDISTILL_HOME or ./var>/serve.pid.
SERVE_PID ?= $(or $(RECDISTILL_HOME),var)/serve.pid

.PHONY: install test test-slow lint demo stop serve worker migrate compose-up compose-cpu \
	config-docs clean

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
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/ruff check cli core api worker migrations tests bench scripts

demo: install
	$(VENV)/bin/recdistill quickstart

# Stop the server `make demo` left running, with its local worker: SIGTERM to its process group (it runs in a
# session of its own), up to 60 s for a running job to be handed back, then SIGKILL.
stop:
	@pid=$$(cat "$(SERVE_PID)" 2>/dev/null); \
	if [ -z "$$pid" ]; then echo "no $(SERVE_PID): no server to stop"; exit 0; fi; \
	if ! ps -p "$$pid" -o args= 2>/dev/null | grep -q serve; then \
		echo "recdistill serve (pid $$pid) is not running"; rm -f "$(SERVE_PID)"; exit 0; fi; \
	kill -TERM "-$$pid" 2>/dev/null || kill -TERM "$$pid"; \
	i=0; while kill -0 "-$$pid" 2>/dev/null && [ $$i -lt 60 ]; do sleep 1; i=$$((i + 1)); done; \
	if kill -0 "-$$pid" 2>/dev/null; then echo "still running after 60 s: SIGKILL"; kill -KILL "-$$pid"; fi; \
	rm -f "$(SERVE_PID)"; echo "stopped recdistill serve (pid $$pid) and its worker"

serve: install
	$(VENV)/bin/recdistill serve

worker: install
	$(VENV)/bin/recdistill worker

migrate: install
	$(VENV)/bin/alembic upgrade head

compose-up:
	docker compose up -d --build

compose-cpu:
	docker compose --profile cpu up -d --build postgres redis migrate api worker-cpu

# Regenerate .env.example and the configuration table in docs/deploy.md from core/settings.py.
config-docs: install
	$(PY) scripts/config_table.py --format env --output .env.example && $(PY) scripts/config_table.py --inject docs/deploy.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
