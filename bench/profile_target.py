"""One profile of the sync hot path, for bench.profile; run as a script, never imported.

    python bench/profile_target.py --tree DIR --db URL --redis URL --runs N --out FILE

Runs against the project's source in ``--tree`` (this checkout, or an earlier revision
extracted by bench.profile), so it imports nothing of the benchmark package: the no-op
handler and the fixtures are defined here, as B1 defines them. It counts the SQL
statements and Redis commands of one run, then profiles ``--runs`` runs under
pyinstrument (a sampling profiler: wall-clock time, every 100 µs) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

_UPDATED = re.compile(r'UPDATE ("?\w+"?)')
_INSERTED = re.compile(r'INSERT INTO ("?\w+"?)')
_READ = re.compile(r'FROM ("\w+")')
_STDLIB = re.compile(r".*/lib/python3\.\d+/")


def statement_label(sql: str) -> str:
    """A statement without its values: the verb and the tables it touches."""

    def tables(pattern: re.Pattern) -> str:
        return ", ".join(dict.fromkeys(pattern.findall(sql)))

    if sql.startswith("WITH"):
        return f"WITH u AS (UPDATE {tables(_UPDATED)} ...) INSERT INTO {tables(_INSERTED)}"
    if sql.startswith("SELECT"):
        return "SELECT ... FROM " + tables(_READ)  # noqa: S608  (a label, never run)
    if sql.startswith("INSERT"):
        return "INSERT INTO " + tables(_INSERTED)
    if sql.startswith("UPDATE"):
        return f"UPDATE {tables(_UPDATED)} SET ..."  # noqa: S608  (a label, never run)
    return sql.split()[0]


def _setup(db_url: str, redis_url: str) -> None:
    os.environ.update(
        DATABASE_URL=db_url,
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        NODE_AUTOREGISTER="false",
        DEBUG="false",
        ALLOWED_HOSTS="localhost,127.0.0.1",
        SECRET_KEY="bench-" + os.urandom(16).hex(),
        DJANGO_SETTINGS_MODULE="config.settings",
        LOG_LEVEL="WARNING",
    )
    migrated_database(db_url)


def migrated_database(db_url: str) -> None:
    """Create the benchmark's database if need be, set Django up and migrate it (bench.hotpath
    uses it too; this script imports nothing of the benchmark package)."""
    name = urlsplit(db_url).path.lstrip("/")
    admin = db_url.rsplit("/", 1)[0] + "/postgres"
    exists = subprocess.run(
        # The name comes from the operator's own BENCH_DATABASE_URL.
        ["psql", admin, "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],  # noqa: S608
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not exists:
        subprocess.run(["psql", admin, "-qc", f'CREATE DATABASE "{name}"'], check=True)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def bench_fixtures():
    """(organization, agent, principal) of the benchmarks (bench.hotpath uses it too)."""
    from agents.choices import AgentStatus, Scope
    from agents.handlers.base import AgentHandler
    from agents.handlers.registry import registry
    from agents.models import Agent, AgentCapability, Organization
    from agents.principal import Principal

    # bench/handlers.py's handler, defined here again: an earlier revision may not have it.
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


def _counted_run(run) -> tuple[list[str], list[str]]:
    """The SQL statements and Redis commands of one run."""
    import redis.client
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    commands: list[str] = []
    execute, pipeline = redis.client.Redis.execute_command, redis.client.Pipeline.execute

    def counting_execute(self, *args, **kwargs):
        commands.append(str(args[0]))
        return execute(self, *args, **kwargs)

    def counting_pipeline(self, *args, **kwargs):
        commands.append("pipeline(" + " ".join(str(c[0][0]) for c in self.command_stack) + ")")
        return pipeline(self, *args, **kwargs)

    time.sleep(0.2)  # what earlier runs left to the event-sender thread is sent first
    redis.client.Redis.execute_command = counting_execute
    redis.client.Pipeline.execute = counting_pipeline
    try:
        with CaptureQueriesContext(connection) as ctx:
            run()
        time.sleep(0.2)  # the event-sender thread's pipeline, sent after the run returns
    finally:
        redis.client.Redis.execute_command = execute
        redis.client.Pipeline.execute = pipeline
    return [statement_label(q["sql"]) for q in ctx.captured_queries], commands


def _where(frame) -> str:
    path = frame.file_path or "<built-in>"
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif _STDLIB.search(path):
        path = _STDLIB.sub("", path)
    elif os.path.isabs(path):
        path = os.path.relpath(path, os.getcwd())
    return f"{path}:{frame.line_no}({frame.function})"


def _aggregate(root) -> tuple[dict, dict]:
    """(inclusive, own) seconds per function over the call tree; a function that appears
    within itself (recursion) counts once per path."""
    inclusive: dict[str, float] = {}
    own: dict[str, float] = {}

    def walk(frame, active: frozenset) -> None:
        if frame.is_synthetic:  # "[self]" and the like: already in the parent's self time
            return
        key = _where(frame)
        own[key] = own.get(key, 0.0) + frame.total_self_time
        if key not in active:
            inclusive[key] = inclusive.get(key, 0.0) + frame.time
            active = active | {key}
        for child in frame.children:
            walk(child, active)

    walk(root, frozenset())
    return inclusive, own


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--async-runs", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    tree = os.path.abspath(args.tree)
    # The project's source from --tree, not from wherever this script lies.
    sys.path[0] = tree
    os.chdir(tree)
    _setup(args.db, args.redis)
    _, _, principal = bench_fixtures()

    from orchestration.services.orchestrator import OrchestrateCommand, orchestrate

    command = OrchestrateCommand(intent="bench", payload={"text": "x" * 200})

    def run():
        result = orchestrate(command, principal)
        assert result.http_status == 200, result.body

    for _ in range(100):  # warm-up: the process's caches, prepared statements
        run()
    statements, commands = _counted_run(run)
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "profiler": "pyinstrument",
        "interval_s": INTERVAL_S,
        "runs": args.runs,
        **_profiled(lambda _: run(), range(args.runs)),
        "statements": statements,
        "redis_commands": commands,
    }
    if args.async_runs:
        report["async"] = _async(principal, args.async_runs)
    with open(args.out, "w") as out:
        json.dump(report, out, indent=2)
    return 0


INTERVAL_S = 0.0001


def _profiled(call, items) -> dict:
    """``call(item)`` for every item under pyinstrument: time per call and top costs."""
    from pyinstrument import Profiler

    items = list(items)
    profiler = Profiler(interval=INTERVAL_S)
    wall, cpu = time.perf_counter(), time.process_time()
    profiler.start()
    for item in items:
        call(item)
    session = profiler.stop()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    inclusive, own = _aggregate(session.root_frame())
    n = len(items)

    def rows(table: dict, pattern: str, count: int) -> list[dict]:
        picked = [(k, v) for k, v in table.items() if re.match(pattern, k)]
        picked.sort(key=lambda kv: -kv[1])
        return [
            {"function": k, "us_per_run": v / n * 1e6, "share": v / session.duration}
            for k, v in picked[:count]
        ]

    return {
        "samples": session.sample_count,
        "wall_us_per_run_profiled": wall / n * 1e6,
        "cpu_us_per_run_profiled": cpu / n * 1e6,
        "project_inclusive": rows(inclusive, r"(orchestration|runs|agents)/", 15),
        "own_time": rows(own, r".", 15),
    }


def _async(principal, n: int) -> dict:
    """An async run in two halves, each profiled in this process: its submission
    (orchestrate(mode=async): the PENDING row, then the message on a queue nobody reads)
    and its execution as a worker's task does it (execute_run with the run's id: the
    claim, the handler, the finish), without the broker's hand-over between them."""
    import redis
    from django.conf import settings

    from orchestration.services.orchestrator import OrchestrateCommand, orchestrate
    from orchestration.tasks import execute_run

    queue = f"bench-profile-{os.getpid()}"
    settings.RUN_DEFAULT_QUEUE = queue
    command = OrchestrateCommand(intent="bench", payload={"text": "x" * 200}, mode="async")
    ids: list[str] = []

    def submit(_):
        result = orchestrate(command, principal)
        assert result.http_status == 202, result.body
        ids.append(str(result.run.pk))

    def execute(run_id):
        assert execute_run(run_id) == "SUCCESS"

    try:
        for _ in range(100):  # warm-up
            submit(None)
        for run_id in ids:
            execute(run_id)
        ids.clear()
        submission = _profiled(submit, range(n))
        execution = _profiled(execute, list(ids))
    finally:
        redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(queue)
    return {"runs": n, "submission": submission, "execution": execution}


if __name__ == "__main__":
    sys.exit(main())
