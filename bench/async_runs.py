"""B2 async throughput and B3 async latency: our Celery path vs Celery + django-celery-results.

    python -m bench.async_runs [--runs 5000] [--reps 2] [--latency-runs 500]
                               [--default-get-runs 60] [--prefect-runs 30] [--no-prefect]

B2: ``--runs`` no-op runs submitted back to back from this process and completed by one
Celery worker with 2 prefork processes (Redis broker), timed from the first submission to
the last completion, runs/s:
- ours: orchestrate(mode=async) (resolution, rate limit, PENDING row, routing, enqueue on
  commit), the worker's execute_run (claim, circuit, the handler recording 3 metrics and
  1 tool execution, the one-statement finish with its run.succeeded event); the worker is a
  fleet node, as by default, so runs go to its own node queue while it has headroom and to
  the default queue (which it consumes too) otherwise -- the share sent to its node queue
  is measured (node_queue_share);
- raw Celery + django-celery-results, a no-op task whose result row Celery stores, with
  Celery's default (the worker closes its database connection around every task) and with
  connection reuse (CELERY_DB_REUSE_MAX);
- the floor: the least any design that records its runs does on plain Celery (connection
  reuse on): the PENDING row committed before the task is sent, the task's one UPDATE
  ending it, no result stored (bench.celery_raw.record_finish). What ours is to it says how
  much of the gap to the baseline is the recording itself and how much the rest.
The four alternate, ``--reps`` times. Each variant, and B3, starts from vacuumed tables
(_settle: VACUUM ANALYZE and CHECKPOINT), as autovacuum would leave them. Measured with
each: the CPU every process serving the runs spent per run (/proc, ended processes
included), the write-ahead log PostgreSQL wrote per run, and for ours agent_runs' updates
and how many were HOT. Then the same worker alone (_drain): as many runs submitted while it
consumes nothing, timed from the moment it consumes again until it completed them all --
which half, the one submitting process or the worker, bounds each variant.

B3: ``--latency-runs`` sequential runs, from submission to the caller holding the terminal
state, p50 / p99, alternating run by run between:
- ours: orchestrate(async) then runs.services.run_wait() given the run orchestrate()
  returned (woken by the completion signal pushed over Redis, which carries the ended row);
- raw Celery + django-celery-results (connection reuse on): AsyncResult.get() with 5 ms
  polling, and with its default 0.5 s polling (``--default-get-runs`` of them, as each
  costs about half a second);
- Prefect 3 (a flow with one task, local ephemeral backend) in its own virtualenv under
  var/bench-prefect, installed from PyPI on first use, never into the project's; skipped
  with a note when it cannot be installed or run.

Writes bench/results/async_runs.json, bench/results/async_runs.md (sections B2 and B3).
Database and Redis as bench.hotpath (BENCH_DATABASE_URL, REDIS_URL).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from bench import async_report
from bench.hotpath import DEFAULT_DB, _fixtures, _setup_django
from bench.procstat import CPU_GROUPS, cpu_snapshot, cpu_used

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results")
PREFECT_VENV = ROOT / "var" / "bench-prefect"
PREFECT_SPEC = "prefect>=3,<4"
WORKER_PROCESSES = 2
OURS_NODE = "bench-ours"  # the node id of our worker


# --- worker processes ---------------------------------------------------------------------


class Worker:
    """One Celery worker (prefork, WORKER_PROCESSES processes) consuming one queue."""

    def __init__(self, app: str, name: str, queue: str, env: dict) -> None:
        self.app, self.name, self.queue, self.env = app, name, queue, env
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> Worker:
        from config.celery import app as control_app

        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                self.app,
                "worker",
                "-Q",
                self.queue,
                "-n",
                f"{self.name}@%h",
                "-c",
                str(WORKER_PROCESSES),
                "-P",
                "prefork",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "WARNING",
            ],
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited with {self.process.returncode}")
            if control_app.control.ping(
                destination=[f"{self.name}@{os.uname().nodename}"], timeout=0.5
            ):
                return self
        self.stop()
        raise RuntimeError(f"worker {self.name} did not start within {timeout:.0f} s")

    @property
    def node(self) -> str:
        return f"{self.name}@{os.uname().nodename}"

    def pause(self) -> list[str]:
        """Stop consuming every queue the worker consumes; the queues, for resume()."""
        from config.celery import app as control_app

        control = control_app.control
        active = control.inspect(destination=[self.node], timeout=5).active_queues() or {}
        queues = [q["name"] for q in active.get(self.node, [])]
        for queue in queues:
            control.cancel_consumer(queue, destination=[self.node], reply=True, timeout=5)
        return queues

    def resume(self, queues: list[str]) -> None:
        from config.celery import app as control_app

        for queue in queues:
            control_app.control.add_consumer(queue, destination=[self.node], reply=True, timeout=5)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def _worker_env(db_url: str, redis_url: str, **extra: str) -> dict:
    return {
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "AGENT_HANDLER_MODULES": "bench.handlers",
        "LOG_LEVEL": "WARNING",
        **extra,
    }


def _ours_worker(db_url: str, redis_url: str, queue: str) -> Worker:
    from django.conf import settings

    # Where this process's runs would go without a routable node.
    settings.RUN_DEFAULT_QUEUE = queue
    # The project's defaults: connection reuse on (settings.CELERY_DB_REUSE_MAX), the
    # worker registered as a node with its heartbeat (NODE_AUTOREGISTER, which this process
    # turns off for itself), consuming its own node queue, to which the runs are routed.
    return Worker(
        "config",
        f"bench-ours-{queue[-6:]}",
        queue,
        _worker_env(
            db_url,
            redis_url,
            RUN_DEFAULT_QUEUE=queue,
            ORCHESTRATOR_NODE_ID=OURS_NODE,
            NODE_AUTOREGISTER="true",
        ),
    )


def _raw_worker(db_url: str, redis_url: str, queue: str, reuse: bool) -> Worker:
    return Worker(
        "bench.celery_raw",
        f"bench-raw-{queue[-6:]}",
        queue,
        _worker_env(
            db_url,
            redis_url,
            NODE_AUTOREGISTER="false",
            # 0: Celery's own default, the connection closed before and after every task.
            CELERY_DB_REUSE_MAX="1000" if reuse else "0",
        ),
    )


def _queue(prefix: str) -> str:
    return f"bench-{prefix}-{uuid.uuid4().hex[:6]}"


# --- B2 -----------------------------------------------------------------------------------


def _wait_count(count_done, expected: int, timeout: float) -> float:
    """Poll until ``count_done()`` reaches ``expected``; the time it did, perf_counter."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count_done() >= expected:
            return time.perf_counter()
        time.sleep(0.05)
    raise RuntimeError(f"only {count_done()} of {expected} completed within {timeout:.0f} s")


def _submit_ours(n: int, principal) -> None:
    from orchestration.services.orchestrator import OrchestrateCommand, orchestrate

    command = OrchestrateCommand(intent="bench", payload={"n": 1}, mode="async")
    for _ in range(n):
        result = orchestrate(command, principal)
        assert result.http_status == 202, result.body


def _active_ours(agent, since) -> int:
    """The agent's runs not ended yet (PENDING or RUNNING): once a batch is submitted, the
    batch's runs still to complete. Counted in the partial index of active runs, so a poll
    reads those few rows, not the whole batch (the ended runs' count would scan every run
    of the batch on every poll, a cost on the server that grows with the batch)."""
    from runs.models import AgentRun

    return AgentRun.objects.filter(
        status__in=["PENDING", "RUNNING"], created_at__gte=since, agent=agent
    ).count()


def _throughput_ours(n: int, principal, agent, timeout: float) -> dict:
    from django.utils import timezone

    from runs.models import AgentRun

    since = timezone.now()
    start = time.perf_counter()
    _submit_ours(n, principal)
    submitted = time.perf_counter()
    end = _wait_count(lambda: n - _active_ours(agent, since), n, timeout)
    failed = (
        AgentRun.objects.filter(agent=agent, created_at__gte=since)
        .exclude(status="SUCCESS")
        .count()
    )
    return {
        "runs_per_s": n / (end - start),
        "submit_per_s": n / (submitted - start),
        "not_successful": failed,
    }


def _submit_raw(n: int, queue: str) -> None:
    from bench.celery_raw import noop

    for _ in range(n):
        noop.apply_async(queue=queue)


def _ended_raw(since) -> int:
    from django_celery_results.models import TaskResult

    return TaskResult.objects.filter(date_created__gte=since).count()


def _throughput_raw(n: int, queue: str, timeout: float) -> dict:
    from django.utils import timezone
    from django_celery_results.models import TaskResult

    since = timezone.now()
    start = time.perf_counter()
    _submit_raw(n, queue)
    submitted = time.perf_counter()
    end = _wait_count(lambda: _ended_raw(since), n, timeout)
    return {
        "runs_per_s": n / (end - start),
        "submit_per_s": n / (submitted - start),
        "not_successful": TaskResult.objects.filter(date_created__gte=since)
        .exclude(status="SUCCESS")
        .count(),
    }


def _submit_floor(n: int, queue: str) -> None:
    from django.db import connection

    from bench.celery_raw import FLOOR_INSERT, record_finish

    for _ in range(n):
        # Committed on its own (autocommit) before the task is sent, as our runs are.
        with connection.cursor() as cursor:
            cursor.execute(FLOOR_INSERT, ['{"n": 1}'])
            row_id = cursor.fetchone()[0]
        record_finish.apply_async(args=(row_id,), queue=queue)


def _pending_floor(since) -> int:
    """The floor's rows of the batch not ended yet, counted in their partial index."""
    from django.db import connection

    from bench.celery_raw import FLOOR_TABLE

    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM {FLOOR_TABLE}"  # noqa: S608  (a constant)
            " WHERE status = 'PENDING' AND created_at >= %s",
            [since],
        )
        return int(cursor.fetchone()[0])


def _throughput_floor(n: int, queue: str, timeout: float) -> dict:
    from django.utils import timezone

    since = timezone.now()
    start = time.perf_counter()
    _submit_floor(n, queue)
    submitted = time.perf_counter()
    end = _wait_count(lambda: n - _pending_floor(since), n, timeout)
    from django.db import connection

    from bench.celery_raw import FLOOR_TABLE

    with connection.cursor() as cursor:
        # Read after the timed part: the batch's rows that did not end SUCCESS.
        cursor.execute(
            f"SELECT count(*) FROM {FLOOR_TABLE}"  # noqa: S608  (a constant)
            " WHERE created_at >= %s AND status <> 'SUCCESS'",
            [since],
        )
        not_successful = int(cursor.fetchone()[0])
    return {
        "runs_per_s": n / (end - start),
        "submit_per_s": n / (submitted - start),
        "not_successful": not_successful,
    }


def _floor_table(db: str) -> None:
    import psycopg

    from bench.celery_raw import FLOOR_SETUP

    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(FLOOR_SETUP)


def _drain(worker: Worker, n: int, submit, completed, timeout: float) -> dict:
    """The worker alone: ``n`` runs submitted while it consumes nothing, then timed from the
    moment it consumes again until it completed them all (runs/s), with the CPU its
    processes, PostgreSQL and Redis spent per run meanwhile. Which of the two halves of
    B2 -- the one submitting process or the worker -- bounds a variant's throughput."""
    from django.utils import timezone

    queues = worker.pause()
    since = timezone.now()
    submit(n)
    before = cpu_snapshot(worker.process.pid)
    start = time.perf_counter()
    worker.resume(queues)
    end = _wait_count(lambda: completed(since, n), n, timeout)
    used = cpu_used(before, cpu_snapshot(worker.process.pid))
    return {
        "runs_per_s": n / (end - start),
        "cpu_us_per_run": {g: used[g] / n * 1e6 for g in CPU_GROUPS[1:]},
    }


def _connect_ms(db: str, n: int = 30) -> float:
    """p50 of opening (and closing) a PostgreSQL connection to the benchmark's database: what
    Celery's default costs every task (it reconnects around each one)."""
    import psycopg

    samples = []
    for _ in range(n):
        start = time.perf_counter()
        psycopg.connect(db).close()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def _wal_bytes(db: str) -> int:
    """Where the server's write-ahead log stands, in bytes: what every write costs it."""
    import psycopg

    with psycopg.connect(db, autocommit=True) as conn:
        return int(conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()[0])


def _with_cpu(measure, n: int, worker: Worker, db: str) -> dict:
    """``measure()``'s figures plus the CPU each group spent per run meanwhile (µs) and
    the write-ahead log the server wrote per run (bytes)."""
    wal_before = _wal_bytes(db)
    before = cpu_snapshot(worker.process.pid)
    figures = measure()
    used = cpu_used(before, cpu_snapshot(worker.process.pid))
    figures["wal_bytes_per_run"] = (_wal_bytes(db) - wal_before) / n
    figures["cpu_us_per_run"] = {g: used[g] / n * 1e6 for g in CPU_GROUPS}
    return figures


def _run_updates(db: str) -> tuple[int, int, int]:
    """agent_runs' row updates so far, how many of them were HOT (heap-only: no index
    entry written), and how many indexes the table has."""
    import psycopg

    with psycopg.connect(db, autocommit=True) as conn:
        updates, hot = conn.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'agent_runs'"
        ).fetchone()
        indexes = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'agent_runs'"
        ).fetchone()[0]
    return int(updates), int(hot), int(indexes)


def _run_updates_settled(db: str, timeout: float = 15.0) -> tuple[int, int, int]:
    """_run_updates() once the statistics stop moving: a server process reports its
    counts when it ends or every second or so, not at each statement."""
    last = _run_updates(db)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = _run_updates(db)
        if now == last:
            break
        last = now
    return last


# What the variants write: vacuumed before each of them (_settle).
SETTLE_TABLES = (
    "agent_runs",
    "agent_run_metrics",
    "tool_executions",
    "orchestrator_events",
    "django_celery_results_taskresult",
    "bench_floor_runs",
)


def _settle(db: str) -> None:
    """VACUUM ANALYZE what the previous variants wrote, then CHECKPOINT: each variant starts
    from the tables autovacuum would have left. This machine's PostgreSQL may run with
    autovacuum off (docs/PERFORMANCE.md's header reads it from the server); a run's row is
    updated twice, so without it every later variant, B3 most of all, would pay for the dead
    rows of those before it -- a cost no deployment with autovacuum on carries."""
    import psycopg

    with psycopg.connect(db, autocommit=True) as conn:
        for table in SETTLE_TABLES:
            conn.execute(f"VACUUM ANALYZE {table}")
        conn.execute("CHECKPOINT")


def _variant_calls(name: str, queue: str, principal, agent, timeout: float) -> tuple:
    """A B2 variant's (throughput(n), submit(n), completed(since, n)) on its queue."""
    if name == "ours":
        return (
            lambda n: _throughput_ours(n, principal, agent, timeout),
            lambda n: _submit_ours(n, principal),
            lambda since, n: n - _active_ours(agent, since),
        )
    if name == "floor":
        return (
            lambda n: _throughput_floor(n, queue, timeout),
            lambda n: _submit_floor(n, queue),
            lambda since, n: n - _pending_floor(since),
        )
    return (
        lambda n: _throughput_raw(n, queue, timeout),
        lambda n: _submit_raw(n, queue),
        lambda since, n: _ended_raw(since),
    )


def b2(args, principal, agent) -> dict:
    variants = {"ours": [], "raw_reuse": [], "raw_default": [], "floor": []}
    timeout = max(120.0, args.runs / 20)
    _floor_table(args.db)
    for rep in range(args.reps):
        for name in ("raw_default", "ours", "raw_reuse", "floor"):
            _settle(args.db)
            queue = _queue(name)
            if name == "ours":
                worker = _ours_worker(args.db, args.redis, queue)
            else:
                worker = _raw_worker(args.db, args.redis, queue, reuse=name != "raw_default")
            worker.start()
            try:
                throughput, submit, completed = _variant_calls(
                    name, queue, principal, agent, timeout
                )
                # Warm-up: the worker processes' imports, connections, script cache.
                throughput(20)
                if name == "ours":
                    updates_before = _run_updates_settled(args.db)
                with _queues_sent() as sent:
                    figures = _with_cpu(
                        functools.partial(throughput, args.runs), args.runs, worker, args.db
                    )
                    figures["drain"] = _drain(worker, args.runs, submit, completed, timeout)
            finally:
                worker.stop()
            if name == "ours":
                # Counted once the worker's server processes have ended (and reported).
                updates, hot, indexes = _run_updates_settled(args.db)
                updated = updates - updates_before[0]
                figures["agent_runs_writes"] = {
                    # The measured runs and the drain's, both the same path.
                    "updates_per_run": updated / (2 * args.runs),
                    "hot_share": (hot - updates_before[1]) / updated if updated else 0.0,
                    "indexes": indexes,
                }
                figures["node_queue_share"] = _node_queue_share(sent)
            variants[name].append(figures)
            print(f"B2 rep {rep + 1} {name}: {figures['runs_per_s']:.1f} runs/s", flush=True)
    return variants


@contextlib.contextmanager
def _queues_sent():
    """Counts, by queue, the execute_run messages this process sends meanwhile (the
    messages of our runs; the raw variants' tasks are sent by Celery itself)."""
    from orchestration import sending

    send, counts = sending.execute_run_send, collections.Counter()

    def counted(run_id, *, queue, **options):
        counts[queue] += 1
        return send(run_id, queue=queue, **options)

    sending.execute_run_send = counted
    try:
        yield counts
    finally:
        sending.execute_run_send = send


def _node_queue_share(sent: collections.Counter) -> float:
    """The share of our runs sent to the worker's own node queue: routed to it as a fleet
    node with headroom (otherwise to the default queue, which the worker consumes too)."""
    from orchestration.queues import node_queue

    total = sum(sent.values())
    return sent[node_queue(OURS_NODE)] / total if total else 0.0


# --- B3 -----------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _latency_summary(values_s: list[float]) -> dict:
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "p50_ms": statistics.median(ms),
        "p99_ms": _percentile(ms, 99),
        "min_ms": min(ms),
        "max_ms": max(ms),
        "mean_ms": statistics.fmean(ms),
    }


def _round_trips(redis_url: str, n: int = 2000) -> dict:
    """p50 of one bare round trip from this process, in µs: a Redis PING and a PostgreSQL
    ``SELECT 1`` on the connection the runs use. B3's chains are made of such trips, so
    their cost on the machine at the time says how long any chain can be."""
    import redis
    from django.db import connection

    client = redis.Redis.from_url(redis_url)
    connection.ensure_connection()
    trips: dict[str, list[float]] = {"redis_ping_us": [], "postgres_select_1_us": []}
    with connection.cursor() as cursor:
        for _ in range(n):
            start = time.perf_counter()
            client.ping()
            middle = time.perf_counter()
            cursor.execute("SELECT 1")
            cursor.fetchone()
            end = time.perf_counter()
            trips["redis_ping_us"].append((middle - start) * 1e6)
            trips["postgres_select_1_us"].append((end - middle) * 1e6)
    client.close()
    return {name: round(statistics.median(values), 1) for name, values in trips.items()}


def b3(args, principal) -> dict:
    from bench.celery_raw import noop
    from orchestration.services.orchestrator import OrchestrateCommand, orchestrate
    from runs import services as run_services

    command = OrchestrateCommand(intent="bench", payload={"n": 1}, mode="async")
    ours_queue, raw_queue = _queue("ours-lat"), _queue("raw-lat")
    workers = [
        _ours_worker(args.db, args.redis, ours_queue).start(),
        _raw_worker(args.db, args.redis, raw_queue, reuse=True).start(),
    ]
    _settle(args.db)
    samples: dict[str, list[float]] = {"ours": [], "raw_get_5ms": [], "raw_get_default": []}
    # Wall-clock instants of each measured run of ours: (run id, submitted, accepted, held).
    instants: list[tuple] = []

    def ours() -> float:
        start, wall = time.perf_counter(), time.time()
        result = orchestrate(command, principal)
        accepted = time.time()
        run = run_services.run_wait(result.run, timeout=30)
        elapsed = time.perf_counter() - start
        assert run.status == "SUCCESS", run.status
        instants.append((run.pk, wall, accepted, wall + elapsed))
        return elapsed

    def raw(interval: float | None) -> float:
        start = time.perf_counter()
        async_result = noop.apply_async(queue=raw_queue)
        if interval is None:
            async_result.get(timeout=30)
        else:
            async_result.get(timeout=30, interval=interval)
        return time.perf_counter() - start

    try:
        for _ in range(20):  # warm-up
            ours()
            raw(0.005)
        instants.clear()
        trips_before = _round_trips(args.redis)
        with _queues_sent() as sent:
            for i in range(args.latency_runs):
                samples["ours"].append(ours())
                samples["raw_get_5ms"].append(raw(0.005))
                if i < args.default_get_runs:
                    samples["raw_get_default"].append(raw(None))
        trips_after = _round_trips(args.redis)
    finally:
        for worker in workers:
            worker.stop()
    report = {name: _latency_summary(values) for name, values in samples.items() if values}
    report["ours"]["breakdown_ms"] = _breakdown(instants)
    report["ours"]["node_queue_share"] = _node_queue_share(sent)
    report["round_trips_us"] = {
        name: [trips_before[name], trips_after[name]] for name in trips_before
    }
    report["prefect"] = _prefect(args)
    return report


def _breakdown(instants: list[tuple]) -> dict:
    """Where a run of ours spends its latency, from the instants the caller saw and those
    the run's row records (every process reads the same machine clock): the submission
    (orchestrate() until it returns), the way to the worker (the send, the broker, the
    worker's hand-over to a pool process, until the claim's started_at, taken just before
    the claim statement), the execution (the claim statement, the circuit, the handler,
    until completed_at, taken just before the finish statement) and the way back (the
    finish statement and its commit, the completion signal, the waiter's wake-up and the
    run built from the signal). Medians (ms) of each segment."""
    from runs.models import AgentRun

    rows = dict(
        (pk, (started.timestamp(), completed.timestamp()))
        for pk, started, completed in AgentRun.objects.filter(
            pk__in=[i[0] for i in instants]
        ).values_list("pk", "started_at", "completed_at")
    )
    segments: dict[str, list[float]] = {
        "submission": [],
        "to the worker": [],
        "execution": [],
        "back to the caller": [],
    }
    for pk, submitted, accepted, held in instants:
        started, completed = rows[pk]
        for name, (a, b) in zip(
            segments,
            ((submitted, accepted), (accepted, started), (started, completed), (completed, held)),
            strict=True,
        ):
            segments[name].append((b - a) * 1000)
    return {name: statistics.median(values) for name, values in segments.items() if values}


# --- Prefect, in its own virtualenv ---------------------------------------------------------

PREFECT_SCRIPT = textwrap.dedent(
    """
    import json, statistics, sys, time
    from prefect import flow, task

    @task
    def noop():
        return None

    @flow
    def one():
        return noop()

    runs = int(sys.argv[1])
    one()  # warm-up: starts the ephemeral backend
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        one()
        samples.append(time.perf_counter() - start)
    import prefect
    print(json.dumps({"version": prefect.__version__, "samples": samples}))
    """
)


def _prefect(args) -> dict:
    if args.no_prefect:
        return {"skipped": "not requested (--no-prefect)"}
    python = PREFECT_VENV / "bin" / "python"
    if not python.exists():
        try:
            subprocess.run(
                [sys.executable, "-m", "venv", str(PREFECT_VENV)], check=True, timeout=120
            )
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", PREFECT_SPEC],
                check=True,
                timeout=600,
                capture_output=True,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            # A half-made venv would be taken for a working one next time.
            subprocess.run(["rm", "-rf", str(PREFECT_VENV)], check=False)
            return {"skipped": f"Prefect did not install from PyPI ({type(exc).__name__})"}
    home = PREFECT_VENV / "home"
    home.mkdir(exist_ok=True)
    script = PREFECT_VENV / "flow_bench.py"
    script.write_text(PREFECT_SCRIPT)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "PREFECT_HOME": str(home),
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    try:
        out = subprocess.run(
            [str(python), str(script), str(args.prefect_runs)],
            check=True,
            timeout=max(300, args.prefect_runs * 5),
            capture_output=True,
            text=True,
            env=env,
            cwd=PREFECT_VENV,
        ).stdout
        result = json.loads(out.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as exc:
        stderr = getattr(exc, "stderr", "") or ""
        reason = stderr.strip().splitlines()[-1][:200] if stderr.strip() else type(exc).__name__
        return {"skipped": f"Prefect did not run: {reason}"}
    return {"version": result["version"], **_latency_summary(result["samples"])}


# --- results -----------------------------------------------------------------------------


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _summaries(reps: list[dict]) -> dict:
    """The repetitions' figures, each number as its _summary(), nested dicts alike."""
    return {
        key: (
            _summaries([rep[key] for rep in reps])
            if isinstance(reps[0][key], dict)
            else _summary([rep[key] for rep in reps])
        )
        for key in reps[0]
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--runs", type=int, default=5000, help="B2 runs per repetition")
    parser.add_argument("--reps", type=int, default=2, help="B2 repetitions")
    parser.add_argument("--latency-runs", type=int, default=500, help="B3 runs per variant")
    parser.add_argument("--default-get-runs", type=int, default=60)
    parser.add_argument("--prefect-runs", type=int, default=30)
    parser.add_argument("--no-prefect", action="store_true")
    parser.add_argument("--skip-b2", action="store_true")
    parser.add_argument("--skip-b3", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS / "async_runs.json")
    args = parser.parse_args(argv)

    _setup_django(args.db, args.redis)
    _, agent, principal = _fixtures()
    command = "python -m bench.async_runs " + " ".join(argv if argv is not None else sys.argv[1:])
    report: dict = {
        "benchmark": "B2 async throughput, B3 async latency",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command.strip(),
        "b2_runs": args.runs,
        "reps": args.reps,
        "worker_processes": WORKER_PROCESSES,
        "cpus": os.cpu_count(),
    }
    previous = json.loads(args.output.read_text()) if args.output.exists() else {}
    if args.skip_b2:
        report["b2"] = previous.get("b2")
        report["b2_connect_ms"] = previous.get("b2_connect_ms")
    else:
        raw = b2(args, principal, agent)
        report["b2"] = {name: _summaries(reps) for name, reps in raw.items()}
        report["b2_connect_ms"] = _connect_ms(args.db)
    report["b3"] = previous.get("b3") if args.skip_b3 else b3(args, principal)
    print(json.dumps(report, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    if report["b2"] and report["b3"]:
        args.output.with_suffix(".md").write_text(async_report.markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
