"""B4: the HTTP API under the production server, and the read endpoints at a million runs.

    python -m bench.http_api [--sizes 10000,100000,1000000] [--rounds 10] [--per-round 30]
                             [--post-requests 2000] [--post-seconds 30] [--concurrency 4]

One unattended run (a few minutes, most of it the bulk load):
1. drops and recreates its databases (named after BENCH_HTTP_DATABASE_URL, default
   postgres://postgres@127.0.0.1:5432/acp_bench_http): the base one is migrated and seeded
   with the "bench" organization, its API key and the reference agents (ContentAgent's rate
   limit raised so the limiter admits every request while still deciding each one), then
   cloned once per size (acp_bench_http_10k, _100k, _1m);
2. bulk-loads each clone with its number of runs (INSERT ... SELECT generate_series, 3 metric
   rows per run), then VACUUM ANALYZE;
3. starts one production server per clone on loopback: uvicorn, 2 worker processes, DEBUG
   off, SECRET_KEY and ALLOWED_HOSTS set, SSL redirect off (plain loopback HTTP),
   PROMETHEUS_MULTIPROC_DIR set, database connections as config/asgi.py sets them up
   (DATABASE_POOL_MAX_SIZE from the environment when set, else config/asgi.py's default);
4. times sequential GET /api/runs/, GET /api/runs/?until=<90% back> and
   GET /api/orchestration/metrics against the sizes in alternating rounds (so the machine's
   noise falls on every size alike): p50 / p95 / p99 pooled, and each round's p95;
   and, per size, the SQL statements of one request with EXPLAIN (ANALYZE, BUFFERS);
5. drives POST /api/orchestrate (sync, ContentAgent's summarize) against the largest size
   with a small asyncio HTTP/1.1 keep-alive load generator, bounded by a request count and a
   time limit: req/s, p50 / p99, and the generator's own CPU per request;
6. writes bench/results/http_api.json and bench/results/http_api.md (the B4 section of
   docs/PERFORMANCE.md, rendered from the JSON by bench.http_report), and drops the
   databases (--keep keeps them).

Runs arrive at a constant rate (--rate-per-day, default 10,000 a day) going back in time: a
bigger table is a longer history, not a busier hour, so the 1 h and 24 h windows of the
metrics endpoint hold the same rows at every size and only the table grows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from bench import http_report

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).with_name("results")
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/acp_bench_http"
# The tenants: "bench" holds 99% of the runs, "small" the other 1%, interleaved in time, so
# the table is shared as in production and the small tenant's pages must come from an
# index of its own rows, not from skipping everyone else's.
TENANTS = {"bench": 0.99, "small": 0.01}
RUNS_PATH = "/api/runs/"
METRICS_PATH = "/api/orchestration/metrics"
ORCHESTRATE_PATH = "/api/orchestrate"
SUMMARIZE_BODY = {
    "agent": "ContentAgent",
    "intent": "summarize",
    "mode": "sync",
    "payload": {
        "text": (
            "The control plane records every run it executes. Each run has a status, a "
            "duration and the metrics its agent reported. Operators read the run list to see "
            "what happened. The metrics endpoint summarises the last hour for dashboards. "
            "Both must stay fast when the table holds a long history."
        ),
        "maxSentences": 2,
    },
}
DEEP = "GET /api/runs/?until= (90% back)"
SMALL = "GET /api/runs/ (the 1% tenant)"
# The server's floor: Django's smallest view, no authentication, no database.
FLOOR = "GET /healthz (floor: no auth, no SQL)"
IN_PROCESS_REQUESTS = 50


# --- databases ---------------------------------------------------------------------------


def _db_named(db_url: str, name: str) -> str:
    parts = urlsplit(db_url)
    return urlunsplit(parts._replace(path="/" + name))


def _db_name(db_url: str) -> str:
    name = urlsplit(db_url).path.lstrip("/")
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise SystemExit(f"refusing to manage a database named {name!r}")
    return name


def _psql_admin(db_url: str, sql: str) -> None:
    subprocess.run(
        ["psql", _db_named(db_url, "postgres"), "-qc", sql], check=True, capture_output=True
    )


def database_drop(db_url: str) -> None:
    _psql_admin(db_url, f'DROP DATABASE IF EXISTS "{_db_name(db_url)}" WITH (FORCE)')


def database_create(db_url: str, template: str | None = None) -> None:
    database_drop(db_url)
    clause = f' TEMPLATE "{_db_name(template)}"' if template else ""
    _psql_admin(db_url, f'CREATE DATABASE "{_db_name(db_url)}"{clause}')


def _django_env(db_url: str, redis_url: str) -> None:
    os.environ["DATABASE_URL"] = db_url
    os.environ["REDIS_URL"] = redis_url
    os.environ["CELERY_BROKER_URL"] = redis_url
    os.environ["NODE_AUTOREGISTER"] = "false"
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()


def migrate_and_seed(db_url: str, redis_url: str) -> dict:
    """The base database: migrations, the organization, its API key, the reference agents."""
    _django_env(db_url, redis_url)
    from django.core.management import call_command
    from django.db import connection

    from agents.models import Agent, AgentCapability
    from agents.services import agent_definitions_sync, api_key_create, organization_create

    call_command("migrate", verbosity=0)
    seeded = {}
    for slug, share in TENANTS.items():
        organization = organization_create(slug=slug, name=slug.title())
        raw_key = api_key_create(organization=organization, name="bench").raw_key
        agent_definitions_sync(organization=organization)
        # High enough that the limiter admits every call while still deciding each one.
        content = Agent.objects.get(organization=organization, name="ContentAgent")
        content.config = {**content.config, "rate_limit": {"limit": 10_000_000, "window_s": 1}}
        content.save(update_fields=["config", "updated_at"])
        capabilities = AgentCapability.objects.filter(agent__organization=organization)
        seeded[slug] = {
            "key": raw_key,
            "org_id": str(organization.pk),
            "share": share,
            "agents": [(str(a), i) for a, i in capabilities.values_list("agent_id", "name")],
        }
    connection.close()  # the base database is a template: nobody may be connected to it
    return seeded


# Runs g = first..last, the g-th newest created at t0 - g * step: a constant arrival rate
# going back in time. ~90% SUCCESS, ~8% FAILED, ~2% CANCELLED, durations 20..1519 ms, three
# metric rows each. Ids are UUIDv7 of the creation time, as the application writes them.
LOAD_SQL = """
WITH spec AS (
    SELECT g,
           %(t0)s::timestamptz - g * %(step)s * interval '1 second' AS ts,
           (g * 7919) %% 1500 + 20 AS dur,
           CASE WHEN g %% 100 < 90 THEN 'SUCCESS'
                WHEN g %% 100 < 98 THEN 'FAILED' ELSE 'CANCELLED' END AS status,
           1 + (g * 31) %% cardinality(%(agent_ids)s::uuid[]) AS pick
    FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
), runs AS (
    INSERT INTO agent_runs (
        id, created_at, updated_at, status, intent, objective, input, output, metrics, meta,
        input_hash, error_code, error_message, idempotency_key, node_id, attempt, queued_at,
        started_at, completed_at, lease_expires_at, cancel_requested_at, duration_ms,
        agent_id, dataset_id, organization_id, retry_of_id, user_id
    )
    SELECT
        {uuid7(ts)},
        ts, ts + dur * interval '1 millisecond', status, (%(intents)s::text[])[pick], '',
        jsonb_build_object('text', 'Summarize the quarterly report for the team ' || g,
                           'maxSentences', 2),
        CASE WHEN status = 'SUCCESS'
             THEN jsonb_build_object('summary', 'The quarter closed ahead of plan.',
                                     'sentences', 2) END,
        jsonb_build_object('durationMs', dur, 'attempts', 1, 'tokens_in', 40 + g %% 60,
                           'tokens_out', 10 + g %% 20),
        '{}'::jsonb, '',
        CASE status WHEN 'FAILED' THEN 'AGENT_EXECUTION_FAILED'
                    WHEN 'CANCELLED' THEN 'CANCELLED' ELSE '' END,
        CASE WHEN status = 'FAILED' THEN 'handler raised' ELSE '' END,
        NULL, 'bench-node', 1, ts, ts, ts + dur * interval '1 millisecond', NULL, NULL, dur,
        (%(agent_ids)s::uuid[])[pick], NULL, %(org)s::uuid, NULL, NULL
    FROM spec
    RETURNING id, created_at, duration_ms
)
INSERT INTO agent_run_metrics (id, created_at, updated_at, name, value, metadata, run_id)
SELECT {uuid7(runs.created_at)}, runs.created_at, runs.created_at, m.name,
       CASE m.name WHEN 'tokens_in' THEN 40 WHEN 'tokens_out' THEN 12
                   ELSE runs.duration_ms / 1000.0 END,
       '{}'::jsonb, runs.id
FROM runs CROSS JOIN (VALUES ('tokens_in'), ('tokens_out'), ('cost_usd')) AS m(name)
"""
# UUIDv7: 48 bits of milliseconds, the version, then random bits. Time-ordered ids keep the
# primary-key inserts at the right edge of the index, as the application's own writes do.
UUID7 = (
    "encode(set_byte(overlay(uuid_send(gen_random_uuid()) PLACING substring(int8send("
    "(extract(epoch FROM {ts}) * 1000)::bigint) FROM 3) FROM 1 FOR 6), 6, "
    "112 + (random() * 15)::int), 'hex')::uuid"
)
LOAD_SQL = LOAD_SQL.replace("{uuid7(ts)}", UUID7.format(ts="ts")).replace(
    "{uuid7(runs.created_at)}", UUID7.format(ts="runs.created_at")
)
LOAD_BATCH = 250_000
# The indexes of the two loaded tables that back no constraint (the primary keys stay).
SECONDARY_INDEXES_SQL = """
SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
FROM pg_index AS i
WHERE i.indrelid IN ('agent_runs'::regclass, 'agent_run_metrics'::regclass)
  AND NOT EXISTS (SELECT 1 FROM pg_constraint AS c WHERE c.conindid = i.indexrelid)
"""


def runs_load(db_url: str, *, seeded: dict, t0: datetime, step_s: float, count: int) -> dict:
    """Insert `count` runs and their metric rows, then VACUUM ANALYZE (as autovacuum would)."""
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(db_url, autocommit=True) as conn:
        # Rows consistent by construction: skip the per-row foreign-key triggers of this
        # session; the application's own writes keep them. Superuser only: otherwise the
        # load checks every key, and takes longer.
        try:
            conn.execute("SET session_replication_role = replica")
        except psycopg.errors.InsufficientPrivilege:
            print("not a superuser: loading with the foreign-key triggers on", flush=True)
        # Dropping the secondary indexes and building them once the rows are in is several
        # times faster than maintaining 17 indexes row by row; the definitions come back
        # verbatim (pg_get_indexdef), so the database ends as the migrations left it.
        indexes = conn.execute(SECONDARY_INDEXES_SQL).fetchall()
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}")
        for tenant in seeded.values():
            # The tenant's share of the runs, at its share of the arrival rate.
            tenant_count = round(count * tenant["share"])
            for low in range(0, tenant_count, LOAD_BATCH):
                conn.execute(
                    LOAD_SQL,
                    {
                        "t0": t0,
                        "step": step_s / tenant["share"],
                        "first": low,
                        "last": min(tenant_count, low + LOAD_BATCH) - 1,
                        "agent_ids": [a for a, _ in tenant["agents"]],
                        "intents": [i for _, i in tenant["agents"]],
                        "org": tenant["org_id"],
                    },
                )
        inserted = time.perf_counter() - started
        conn.execute("SET maintenance_work_mem = '256MB'")
        for _, definition in indexes:
            conn.execute(definition)
        indexed = time.perf_counter() - started
        conn.execute("VACUUM ANALYZE agent_runs")
        conn.execute("VACUUM ANALYZE agent_run_metrics")
        total = conn.execute("SELECT count(*) FROM agent_runs").fetchone()[0]
        runs_bytes, metrics_bytes = conn.execute(
            "SELECT pg_total_relation_size('agent_runs'),"
            " pg_total_relation_size('agent_run_metrics')"
        ).fetchone()
    return {
        "runs_in_table": total,
        "insert_s": round(inserted, 2),
        "index_build_s": round(indexed - inserted, 2),
        "total_s": round(time.perf_counter() - started, 2),
        "indexes_rebuilt": len(indexes),
        "agent_runs_bytes": runs_bytes,
        "agent_run_metrics_bytes": metrics_bytes,
    }


def connect_cost(db_url: str, samples: int = 30) -> dict:
    """What opening (and closing) one PostgreSQL connection costs on this machine."""
    import psycopg

    timings = []
    for _ in range(samples):
        started = time.perf_counter()
        psycopg.connect(db_url).close()
        timings.append((time.perf_counter() - started) * 1000)
    return percentiles(timings)


# --- the server --------------------------------------------------------------------------


SERVER_ENV = {
    "DEBUG": "false",
    "ALLOWED_HOSTS": "127.0.0.1",
    "SECURE_SSL_REDIRECT": "false",
    "NODE_AUTOREGISTER": "true",
    "LOG_LEVEL": "WARNING",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One uvicorn server (its own process group) on a free loopback port."""

    def __init__(self, db_url: str, redis_url: str, *, workers: int, workdir: Path) -> None:
        workdir.mkdir(parents=True)
        (workdir / "prometheus").mkdir()
        self.workdir = workdir
        self.port = _free_port()
        self.command = [
            sys.executable,
            "-m",
            "uvicorn",
            "config.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(workers),
            "--no-access-log",
            "--lifespan",
            "off",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
        ]
        env = {
            **os.environ,
            **SERVER_ENV,
            "SECRET_KEY": secrets.token_urlsafe(50),
            "DATABASE_URL": db_url,
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": redis_url,
            "PROMETHEUS_MULTIPROC_DIR": str(workdir / "prometheus"),
            "VAR_DIR": str(workdir / "var"),
            "PYTHONUNBUFFERED": "1",
        }
        self.log = open(workdir / "server.log", "wb")  # noqa: SIM115 (closed by stop())
        self.process = subprocess.Popen(
            self.command,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )

    def wait_ready(self, workers: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited ({self.process.returncode}):\n{self.tail()}")
            try:
                status, _ = asyncio.run(_one_request(self.port, "GET", "/healthz", {}, None))
            except OSError:
                status = None
            if status == 200:
                for _ in range(workers * 4):  # so that every worker has loaded the app
                    asyncio.run(_one_request(self.port, "GET", "/healthz", {}, None))
                return
            time.sleep(0.3)
        raise SystemExit(f"the server did not answer /healthz within {timeout} s:\n{self.tail()}")

    def tail(self) -> str:
        return (self.workdir / "server.log").read_text(errors="replace")[-3000:]

    def stop(self) -> int:
        """Stop it; the number of error lines it logged."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
        text = (self.workdir / "server.log").read_text(errors="replace")
        return sum(1 for line in text.splitlines() if "Traceback" in line or "ERROR" in line)


# --- a small HTTP/1.1 keep-alive client -----------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection: the fewest bytes and Python per request."""

    def __init__(self, reader, writer) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(self, method: str, path: str, headers: dict, body: bytes | None):
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if not chunked:
            return status, await self.reader.readexactly(length)
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
            parts.append((await self.reader.readexactly(size + 2))[:-2])
            if size == 0:
                return status, b"".join(parts)

    def close(self) -> None:
        self.writer.close()


async def _one_request(port, method, path, headers, body):
    connection = await Connection.open(port)
    try:
        return await connection.request(method, path, headers, body)
    finally:
        connection.close()


def percentiles(samples_ms: list[float]) -> dict:
    ordered = sorted(samples_ms)

    def at(fraction: float) -> float:
        # Nearest rank: an observed latency, never an interpolation.
        index = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
        return round(ordered[index], 2)

    return {
        "n": len(ordered),
        "p50_ms": at(0.50),
        "p95_ms": at(0.95),
        "p99_ms": at(0.99),
        "min_ms": round(ordered[0], 2),
        "max_ms": round(ordered[-1], 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
    }


async def gets_round(port: int, targets: dict[str, tuple[str, str]], requests: int) -> dict:
    """Sequential GETs (one in flight), the targets (name -> path, key) interleaved."""
    connection = await Connection.open(port)
    samples: dict[str, list[float]] = {name: [] for name in targets}
    try:
        for _ in range(requests):
            for name, (path, key) in targets.items():
                headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
                started = time.perf_counter()
                status, payload = await connection.request("GET", path, headers, None)
                samples[name].append((time.perf_counter() - started) * 1000)
                if status != 200:
                    raise SystemExit(f"GET {path}: HTTP {status}: {payload[:500]!r}")
    finally:
        connection.close()
    return samples


async def post_load(port: int, key: str, *, requests: int, seconds: float, concurrency: int):
    """POST /api/orchestrate from `concurrency` keep-alive connections, bounded both ways."""
    body = json.dumps(SUMMARIZE_BODY).encode()
    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "Accept": "application/json",
    }
    latencies: list[float] = []
    failures: dict[str, int] = {}
    issued = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal issued
        connection = await Connection.open(port)
        try:
            while issued < requests and time.perf_counter() < deadline:
                issued += 1
                started = time.perf_counter()
                status, payload = await connection.request("POST", ORCHESTRATE_PATH, headers, body)
                latencies.append((time.perf_counter() - started) * 1000)
                if status != 200 or not json.loads(payload).get("success"):
                    failures[f"HTTP {status}"] = failures.get(f"HTTP {status}", 0) + 1
        finally:
            connection.close()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    return {
        "requests": len(latencies),
        "concurrency": concurrency,
        "wall_s": round(wall, 2),
        "req_per_s": round(len(latencies) / wall, 1),
        "failures": failures,
        "latency": percentiles(latencies),
        # The generator's own cost: CPU it took from the same cores as the server.
        "generator_cpu_us_per_request": round(cpu / max(1, len(latencies)) * 1e6, 1),
        "generator_cpu_share_of_one_core": round(cpu / wall, 3),
    }


# --- what one request runs (a child process with Django on one size's database) --------------


def explain_main(db_url: str, redis_url: str, targets: dict[str, list[str]]) -> None:
    """Print, per target, the statements of one request with EXPLAIN (ANALYZE, BUFFERS),
    and the request's time in this process (no server, one persistent connection)."""
    # The server's settings, but for the test client's host name.
    os.environ.update({**SERVER_ENV, "ALLOWED_HOSTS": "testserver"})
    os.environ["SECRET_KEY"] = secrets.token_urlsafe(50)
    os.environ["VAR_DIR"] = str(Path(tempfile.gettempdir()) / "bench-http-explain")
    _django_env(db_url, redis_url)
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    out = {}
    for name, (path, key) in targets.items():
        client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
        client.get(path)  # warm: the live configuration, the API key's last_used_at
        timings = []
        for _ in range(IN_PROCESS_REQUESTS):
            started = time.perf_counter()
            client.get(path)
            timings.append((time.perf_counter() - started) * 1000)
        with CaptureQueriesContext(connection) as captured:
            response = client.get(path)
        if response.status_code != 200:
            raise SystemExit(f"GET {path}: HTTP {response.status_code}")
        statements = []
        with connection.cursor() as cursor:
            for query in captured.captured_queries:
                entry = {"sql": query["sql"]}
                if query["sql"].lstrip().upper().startswith("SELECT"):
                    cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + query["sql"])
                    entry["plan"] = [row[0] for row in cursor.fetchall()]
                    match = re.search(r"Execution Time: ([0-9.]+) ms", entry["plan"][-1])
                    entry["execution_ms"] = float(match.group(1)) if match else None
                statements.append(entry)
        out[name] = {"statements": statements, "in_process": percentiles(timings)}
    out["serialization"] = page_serialization()
    print(json.dumps(out))


def page_serialization(reps: int = 20) -> dict:
    """One 50-run page of the list: DRF's field-by-field path against the direct one."""
    from rest_framework import serializers

    from runs import selectors
    from runs.api.serializers import RunListSerializer

    page = list(selectors.run_list_page().order_by("-created_at", "-id")[:50])
    serializer = RunListSerializer()
    timings: dict[str, list[float]] = {"drf_generic_ms": [], "direct_ms": []}
    for _ in range(reps):
        for key, represent in (
            (
                "drf_generic_ms",
                lambda run: serializers.Serializer.to_representation(serializer, run),
            ),
            ("direct_ms", serializer.to_representation),
        ):
            started = time.perf_counter()
            for run in page:
                represent(run)
            timings[key].append((time.perf_counter() - started) * 1000)
    return {key: round(statistics.median(values), 3) for key, values in timings.items()}


def statements_explained(db_url: str, redis_url: str, targets: dict) -> dict:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.http_api",
            "--explain",
            "--db",
            db_url,
            "--redis",
            redis_url,
            "--targets",
            json.dumps(targets),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"explaining the endpoints failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=os.environ.get("BENCH_HTTP_DATABASE_URL", DEFAULT_DB))
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--rate-per-day", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--post-requests", type=int, default=2000)
    parser.add_argument("--post-seconds", type=float, default=30.0)
    parser.add_argument("--post-warmup", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    # Internal: the child process that explains one size's queries.
    parser.add_argument("--explain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--targets", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.explain:
        explain_main(args.db, args.redis, json.loads(args.targets))
        return 0

    started = time.perf_counter()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    base = args.db
    size_dbs = {
        size: _db_named(base, f"{_db_name(base)}_{http_report.size_label(size).lower()}")
        for size in sizes
    }
    database_create(base)
    seeded = migrate_and_seed(base, args.redis)
    for db_url in size_dbs.values():
        database_create(db_url, template=base)

    t0 = datetime.now(UTC)
    step_s = 86400 / args.rate_per_day

    def endpoints_of(size: int) -> dict[str, str]:
        # A page 90% of the way back into that table's history: the keyset at depth.
        deep_until = (t0 - timedelta(seconds=step_s * size * 0.9)).isoformat()
        big, small = seeded["bench"]["key"], seeded["small"]["key"]
        return {
            "GET /api/runs/": (RUNS_PATH, big),
            DEEP: (f"{RUNS_PATH}?until={quote(deep_until)}", big),
            SMALL: (RUNS_PATH, small),
            "GET metrics": (METRICS_PATH, big),
            FLOOR: ("/healthz", big),
        }

    endpoints = {size: endpoints_of(size) for size in sizes}
    report: dict = {
        "benchmark": "B4 HTTP",
        "when": t0.isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "python": platform.python_version(),
        "command": " ".join(
            ["python -m bench.http_api", *(sys.argv[1:] if argv is None else argv)]
        ),
        "rate_per_day": args.rate_per_day,
        "rounds": args.rounds,
        "per_round": args.per_round,
        "warmup": args.warmup,
        "load_batch": LOAD_BATCH,
        "in_process_requests": IN_PROCESS_REQUESTS,
        "endpoints": {
            http_report.size_label(size): {name: path for name, (path, _) in targets.items()}
            for size, targets in endpoints.items()
        },
        "tenants": {slug: tenant["share"] for slug, tenant in seeded.items()},
        "sizes": [],
    }
    for size, db_url in size_dbs.items():
        load = runs_load(db_url, seeded=seeded, t0=t0, step_s=step_s, count=size)
        print(f"[{size:>9,}] loaded: {load}", flush=True)
        report["sizes"].append({"runs": size, "db": _db_name(db_url), "load": load})

    report["postgres_connect"] = connect_cost(size_dbs[sizes[0]])
    workdir = Path(tempfile.mkdtemp(prefix="bench-http-"))
    servers = {
        size: Server(
            db_url, args.redis, workers=args.workers, workdir=workdir / http_report.size_label(size)
        )
        for size, db_url in size_dbs.items()
    }
    error_lines = 0
    try:
        for server in servers.values():
            server.wait_ready(args.workers)
        names = list(endpoints[sizes[0]])
        samples = {size: {name: [] for name in names} for size in sizes}
        round_p95 = {size: {name: [] for name in names} for size in sizes}
        for size, server in servers.items():
            asyncio.run(gets_round(server.port, endpoints[size], args.warmup))
        for index in range(args.rounds):
            # Rotate the order so that no size always goes first (or last) in a round.
            order = sizes[index % len(sizes) :] + sizes[: index % len(sizes)]
            for size in order:
                got = asyncio.run(gets_round(servers[size].port, endpoints[size], args.per_round))
                for name in names:
                    samples[size][name] += got[name]
                    round_p95[size][name].append(percentiles(got[name])["p95_ms"])
            print(f"round {index + 1}/{args.rounds} done", flush=True)
        for entry in report["sizes"]:
            size = entry["runs"]
            entry["get"] = {name: percentiles(samples[size][name]) for name in names}
            entry["round_p95_ms"] = round_p95[size]
            explained = statements_explained(size_dbs[size], args.redis, endpoints[size])
            entry["statements"] = {name: explained[name]["statements"] for name in names}
            entry["in_process"] = {name: explained[name]["in_process"] for name in names}
            entry["serialization"] = explained["serialization"]
            for name in names:
                print(f"[{size:>9,}] {name}: {entry['get'][name]}", flush=True)

        report["targets"] = http_report.verdicts(report["sizes"])

        # POST against the largest table, the other servers stopped.
        for size in sizes[:-1]:
            error_lines += servers.pop(size).stop()
        port, key = servers[sizes[-1]].port, seeded["bench"]["key"]
        asyncio.run(post_load(port, key, requests=args.post_warmup, seconds=30, concurrency=2))
        post = {
            "max_requests": args.post_requests,
            "max_seconds": args.post_seconds,
            "warmup": args.post_warmup,
            "runs": sizes[-1],
            "loads": [],
        }
        # One connection (latency without queueing), then 2 and `concurrency` (throughput).
        for concurrency in sorted({1, 2, args.concurrency}):
            requests = args.post_requests if concurrency > 1 else min(200, args.post_requests)
            load = asyncio.run(
                post_load(
                    port,
                    key,
                    requests=requests,
                    seconds=args.post_seconds,
                    concurrency=concurrency,
                )
            )
            print(f"POST {ORCHESTRATE_PATH}: {load}", flush=True)
            post["loads"].append(load)
        report["post"] = post
    finally:
        for server in servers.values():
            error_lines += server.stop()
        if not args.keep:
            for db_url in [*size_dbs.values(), base]:
                database_drop(db_url)
    report["server"] = {
        "command": " ".join(servers_command_shown(args.workers)),
        "workers": args.workers,
        "env": SERVER_ENV,
        "database_connections": (
            f"`DATABASE_POOL_MAX_SIZE={os.environ['DATABASE_POOL_MAX_SIZE']}` from the environment"
            if "DATABASE_POOL_MAX_SIZE" in os.environ
            else "config/asgi.py's default (`DATABASE_POOL_MAX_SIZE` unset)"
        ),
        "log_error_lines": error_lines,
        "logs": str(workdir),
    }
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "http_api.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.output_dir / "http_api.md").write_text(http_report.markdown(report))
    print(json.dumps(report["targets"], indent=2))
    print(f"B4 done in {report['elapsed_s']} s; server logs under {workdir}")
    return 0


def servers_command_shown(workers: int) -> list[str]:
    return [
        "uvicorn",
        "config.asgi:application",
        "--host 127.0.0.1 --port <free port>",
        f"--workers {workers}",
        "--no-access-log --lifespan off --loop uvloop --http httptools",
    ]


if __name__ == "__main__":
    sys.exit(main())
