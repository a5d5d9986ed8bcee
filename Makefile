# Two commands for a newcomer: `make run` (embedded console with demo data) and
# `make test` (the whole suite against PostgreSQL and Redis). See README.md.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON3 ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

# `make test` talks to real servers; override any of these on the command line or
# in the environment.
DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/acp
REDIS_URL ?= redis://127.0.0.1:6379/0
CELERY_BROKER_URL ?= $(REDIS_URL)
PYTEST_ARGS ?=
# The node `make run` registers (docs/OPERATIONS.md).
RUN_NODE_ID ?= console
export DATABASE_URL REDIS_URL CELERY_BROKER_URL

# The embedded mode: whatever the shell exports, no external database, cache or broker,
# and readable log lines rather than JSON (docs/OBSERVABILITY.md).
EMBEDDED := env -u DATABASE_URL -u REDIS_URL -u CELERY_BROKER_URL LOG_FORMAT=console

.PHONY: help venv run test lint lock bench

help:
	@echo "make run    create .venv, migrate the embedded SQLite database, bootstrap with demo data,"
	@echo "            serve http://127.0.0.1:8000 (admin /admin/, API docs /api/docs/)"
	@echo "make test   run the test suite against PostgreSQL and Redis"
	@echo "            (DATABASE_URL=$(DATABASE_URL) REDIS_URL=$(REDIS_URL))"
	@echo "make bench  benchmarks against their baselines (docs/PERFORMANCE.md)"
	@echo "make lint   ruff check"
	@echo "make lock   regenerate constraints.txt from the installed packages"

venv: $(STAMP)

$(PY):
	$(PYTHON3) -m venv $(VENV)

# Re-install whenever the declared dependencies or the pinned versions change.
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP) install --upgrade pip
	$(PIP) install -c constraints.txt -e '.[dev]'
	touch $@

# bootstrap_orchestrator and the server share one node id, so the server takes over the node
# the bootstrap registered (and the agents it announced) and shuts it down on Ctrl-C.
run: venv
	$(EMBEDDED) $(PY) manage.py migrate --noinput
	$(EMBEDDED) ORCHESTRATOR_NODE_ID=$(RUN_NODE_ID) $(PY) manage.py bootstrap_orchestrator --demo
	$(EMBEDDED) ORCHESTRATOR_NODE_ID=$(RUN_NODE_ID) $(PY) manage.py runserver 127.0.0.1:8000

test: venv
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Benchmarks (not tests): baselines and our code in the same run; see docs/PERFORMANCE.md.
bench: venv
	$(VENV)/bin/python -m bench.policies --url $(REDIS_URL) --reps 5 --calls 2000

lint: venv
	$(VENV)/bin/ruff check .

# Pins what is installed now. To move to newer versions within pyproject.toml's ranges:
# `.venv/bin/pip install --upgrade -e '.[dev]'`, then `make lock`.
lock: | $(PY)
	$(PIP) install -e '.[dev]'
	{ echo "# Exact versions of every dependency, used by 'make venv' as pip constraints."; \
	  echo "# Regenerate with 'make lock' (pip freeze --exclude-editable) after changing"; \
	  echo "# the dependencies in pyproject.toml."; \
	  $(PIP) freeze --exclude-editable; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt
	touch $(STAMP)
