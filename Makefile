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

.PHONY: help venv run test faults lint lock bench

help:
	@echo "make run    create .venv, migrate the embedded SQLite database, bootstrap with demo data,"
	@echo "            serve http://127.0.0.1:8000 (admin /admin/, API docs /api/docs/)"
	@echo "make test   run the test suite against PostgreSQL and Redis"
	@echo "            (DATABASE_URL=$(DATABASE_URL) REDIS_URL=$(REDIS_URL))"
	@echo "make faults the fault and abuse suite at full size (tests/faults); writes the figures"
	@echo "            into docs/RELIABILITY.md (make test runs it shortened)"
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

# The shortened fault scenarios keep their figures apart from make faults' full-size ones.
test: venv
	FAULTS_ARTIFACTS=$(CURDIR)/artifacts/faults-ci $(VENV)/bin/pytest $(PYTEST_ARGS)

# The fault and abuse scenarios at full size (docs/RELIABILITY.md), then their figures into
# docs/RELIABILITY.md, also when a scenario failed (it is listed as failed); the exit status
# is pytest's. `make test` runs the same scenarios shortened (FAULTS_SCALE=ci).
faults: venv
	FAULTS_SCALE=full $(VENV)/bin/pytest -m faults tests/faults $(PYTEST_ARGS); \
	status=$$?; $(PY) -m tests.faults.report; exit $$status

# Benchmarks (not tests): baselines and our code in the same run; see docs/PERFORMANCE.md.
# Each writes bench/results/<name>.json and .md; bench.report assembles docs/PERFORMANCE.md
# (a benchmark that fails is listed there as not measured; `-` lets the others run). Own
# databases: BENCH_DATABASE_URL (B1-B3), BENCH_HTTP_DATABASE_URL (B4). About 15 minutes.
BENCH_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/acp_bench
bench: venv
	-BENCH_DATABASE_URL=$(BENCH_DATABASE_URL) $(VENV)/bin/python -m bench.hotpath --runs 2000 --reps 5
	-BENCH_DATABASE_URL=$(BENCH_DATABASE_URL) $(VENV)/bin/python -m bench.profile --runs 2000
	-BENCH_DATABASE_URL=$(BENCH_DATABASE_URL) $(VENV)/bin/python -m bench.async_runs \
		--runs 5000 --reps 2 --latency-runs 500 --default-get-runs 60 --prefect-runs 30
	-if [ -f bench/http_api.py ]; then $(VENV)/bin/python -m bench.http_api; fi
	-$(VENV)/bin/python -m bench.policies --url $(REDIS_URL) --reps 5 --calls 2000
	BENCH_DATABASE_URL=$(BENCH_DATABASE_URL) $(VENV)/bin/python -m bench.report

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
