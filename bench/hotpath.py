"""B1: the sync hot path against the bare ORM lifecycle and PostgreSQL's own write rate.

    python -m bench.hotpath [--runs 2000] [--reps 5]

In one process, alternating, several repetitions of:
- ours: orchestrate() in-process (sync) with a no-op handler that records 3 metrics and
  1 tool execution, policies on Redis (rate limit + circuit), the run fully recorded;
- bare ORM: create a run -> update it to SUCCESS -> bulk_create 3 metric rows, the same
  persistent connection, no policies, nothing else;
- pgbench: one transaction = INSERT of a ~440-byte row with a jsonb column + UPDATE of it
  by primary key, 1 client, for a few seconds (PostgreSQL's bound).
Reports runs/s, µs per run, Python CPU µs per run and queries per run, with ratios, and
writes bench/results/hotpath.json. Uses its own database (BENCH_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/acp_bench), created and migrated on first use.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

RESULTS = Path(__file__).with_name("results") / "hotpath.json"
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/acp_bench"


def _setup_django(db_url: str, redis_url: str) -> None:
    os.environ["DATABASE_URL"] = db_url
    os.environ["REDIS_URL"] = redis_url
    os.environ.setdefault("CELERY_BROKER_URL", redis_url)
    os.environ["NODE_AUTOREGISTER"] = "false"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    parts = urlsplit(db_url)
    name = parts.path.lstrip("/")
    admin = db_url.rsplit("/", 1)[0] + "/postgres"
    exists = subprocess.run(
        # The name comes from the operator's own BENCH_DATABASE_URL.
        ["psql", admin, "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],  # noqa: S608
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not exists:
        subprocess.run(["psql", admin, "-c", f'CREATE DATABASE "{name}"'], check=True)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _fixtures():
    from agents.choices import AgentStatus, Scope
    from agents.handlers.base import AgentHandler
    from agents.handlers.registry import registry
    from agents.models import Agent, AgentCapability, Organization
    from agents.principal import Principal

    class NoopHandler(AgentHandler):
        key = "bench-noop"

        def handle(self, request, ctx):
            ctx.metric("tokens_in", 3)
            ctx.metric("tokens_out", 5)
            ctx.metric("cost_usd", 0.0001)
            with ctx.tool("bench-tool", {"q": 1}, call_id="c1") as call:
                call.output = {"ok": True}
            return {"ok": True}

    if not registry.is_registered("bench-noop"):
        registry.register(NoopHandler)
    organization, _ = Organization.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
    agent, _ = Agent.objects.get_or_create(
        organization=organization,
        slug="bench-agent",
        defaults={
            "name": "BenchAgent",
            "handler": "bench-noop",
            "status": AgentStatus.ACTIVE,
            # High enough that the limiter admits every call while still deciding each one.
            "config": {"rate_limit": {"limit": 10_000_000, "window_s": 1}},
        },
    )
    AgentCapability.objects.get_or_create(agent=agent, name="bench")
    principal = Principal(
        organization=organization, scopes=frozenset(Scope.values), principal_key="bench"
    )
    return organization, agent, principal


def _ours(n: int, principal) -> tuple[float, float, int]:
    from django.db import connection, reset_queries
    from django.test.utils import CaptureQueriesContext

    from orchestration.services.orchestrator import OrchestrateCommand, orchestrate

    command = OrchestrateCommand(intent="bench", payload={"text": "x" * 200})
    with CaptureQueriesContext(connection) as ctx:
        orchestrate(command, principal)
    queries = len(ctx.captured_queries)
    reset_queries()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        result = orchestrate(command, principal)
        assert result.http_status == 200, result.body
    return time.perf_counter() - wall, time.process_time() - cpu, queries


def _bare_orm(n: int, organization, agent) -> tuple[float, float, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from runs.models import AgentRun, AgentRunMetric

    def one():
        run = AgentRun.objects.create(
            organization=organization, agent=agent, intent="bench", input={"text": "x" * 200}
        )
        run.status = "RUNNING"
        run.status = "SUCCESS"
        run.output = {"ok": True}
        run.completed_at = timezone.now()
        run.save(update_fields=["status", "output", "completed_at", "updated_at"])
        AgentRunMetric.objects.bulk_create(
            [AgentRunMetric(run=run, name=f"m{i}", value=float(i)) for i in range(3)]
        )

    with CaptureQueriesContext(connection) as ctx:
        one()
    queries = len(ctx.captured_queries)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        one()
    return time.perf_counter() - wall, time.process_time() - cpu, queries


PGBENCH_SETUP = """
CREATE TABLE IF NOT EXISTS bench_runs (id bigserial PRIMARY KEY, status text, intent text,
  input jsonb, output jsonb, created_at timestamptz DEFAULT now(), completed_at timestamptz);
"""
PGBENCH_SCRIPT = """
INSERT INTO bench_runs (status, intent, input) VALUES ('PENDING', 'bench',
  '{"text": "%s", "context": {"organization": "bench", "mode": "sync"}}') RETURNING id \\gset
UPDATE bench_runs SET status = 'SUCCESS', output = '{"ok": true}', completed_at = now()
  WHERE id = :id;
""" % ("x" * 300)


def _pgbench(db_url: str, seconds: int) -> float:
    subprocess.run(["psql", db_url, "-qc", PGBENCH_SETUP], check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(PGBENCH_SCRIPT)
    out = subprocess.run(
        ["pgbench", "-n", "-c", "1", "-T", str(seconds), "-f", script.name, db_url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)
    match = re.search(r"tps = ([0-9.]+)", out)
    return float(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--pgbench-seconds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    _setup_django(args.db, args.redis)
    from orchestration.policies import policy_store

    organization, agent, principal = _fixtures()
    reps: dict[str, list[dict]] = {"ours": [], "bare_orm": []}
    pg_tps: list[float] = []
    # Warm-up: caches, prepared plans, the script cache in Redis.
    _ours(50, principal)
    _bare_orm(50, organization, agent)
    for _ in range(args.reps):
        for name in ("bare_orm", "ours"):
            if name == "ours":
                wall, cpu, queries = _ours(args.runs, principal)
            else:
                wall, cpu, queries = _bare_orm(args.runs, organization, agent)
            reps[name].append(
                {
                    "runs_per_s": args.runs / wall,
                    "us_per_run": wall / args.runs * 1e6,
                    "cpu_us_per_run": cpu / args.runs * 1e6,
                    "queries_per_run": queries,
                }
            )
        pg_tps.append(_pgbench(args.db, args.pgbench_seconds))

    def summary(rows: list[dict], key: str) -> dict:
        values = [row[key] for row in rows]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    report = {
        "benchmark": "B1 sync hot path",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "python": platform.python_version(),
        "policy_store": policy_store().backend,
        "runs_per_rep": args.runs,
        "reps": args.reps,
        "ours": {k: summary(reps["ours"], k) for k in reps["ours"][0]},
        "bare_orm": {k: summary(reps["bare_orm"], k) for k in reps["bare_orm"][0]},
        "pgbench_tps_1_client": {
            "median": statistics.median(pg_tps),
            "min": min(pg_tps),
            "max": max(pg_tps),
        },
    }
    ours_us = report["ours"]["us_per_run"]["median"]
    bare_us = report["bare_orm"]["us_per_run"]["median"]
    report["ratio_time_ours_vs_bare_orm"] = ours_us / bare_us
    report["ratio_rate_ours_vs_pgbench"] = (
        report["ours"]["runs_per_s"]["median"] / report["pgbench_tps_1_client"]["median"]
    )
    print(json.dumps(report, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
