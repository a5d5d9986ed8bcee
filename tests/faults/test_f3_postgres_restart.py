"""F3 PostgreSQL restart during load.

A private cluster (servers.PrivateCluster; the shared server is never touched) holds the
whole deployment's database: the API under uvicorn, a Celery worker and beat use it, with
a private Redis as cache, policy store and broker. Clients submit async and sync runs and
read runs back; mid-load the cluster is stopped (``pg_ctl stop -m fast``, which also cuts
every open connection) and started again.

While it is down every request is answered, and every failure is 503 SERVICE_UNAVAILABLE
with Retry-After in the error envelope: never a 500, never a stack trace or an HTML page.
Once it is back the same processes (none restarted) answer again: persistent connections
that broke are dropped and replaced. Every run accepted before, during or after the restart
is in the database and ends terminal (tasks that met the outage are retried; the reaper
re-enqueues or takes back the rest).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import Counter

import psycopg
import pytest

from runs.choices import TERMINAL_RUN_STATES
from tests.faults.figures import scenario
from tests.faults.scale import pick
from tests.faults.servers import (
    ApiServer,
    CeleryBeat,
    CeleryWorker,
    Load,
    PrivateCluster,
    PrivateRedis,
    database_seed,
    project_env,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow]

BEFORE_S = pick(ci=2.0, full=5.0)
# Longer than DATABASE_POOL_TIMEOUT_S (10 s): a request that waits for a connection gives
# up while the database is still down, and answers 503.
DOWN_S = pick(ci=12.0, full=30.0)
AFTER_S = pick(ci=3.0, full=10.0)
ASYNC_CLIENTS = pick(ci=2, full=4)

HANDLERS = "agents.handlers.http,agents.reference,tests.orchestration.handlers"
# Fast housekeeping, so a run that met the outage comes back within the scenario.
FLEET = {
    "heartbeat_interval_s": 2,
    "unhealthy_after_intervals": 3,
    "failed_after_intervals": 6,
    "lease_s": 10,
    "pending_timeout_s": 8,
    "max_attempts": 5,
}
TERMINAL = {str(status) for status in TERMINAL_RUN_STATES}


@pytest.fixture
def cluster():
    pg = PrivateCluster()
    try:
        yield pg.start()
    finally:
        pg.close()


@pytest.fixture
def private_redis():
    with PrivateRedis() as server:
        yield server


def stuck_runs(url: str) -> list[tuple]:
    """What the database says of runs that did not end: for the failure message."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        runs = conn.execute(
            "SELECT id::text, status, node_id, attempt, lease_expires_at - now(), meta,"
            " now() - created_at, now() - queued_at, now() - started_at, now() - updated_at"
            " FROM agent_runs WHERE status NOT IN ('SUCCESS', 'FAILED', 'CANCELLED')"
        ).fetchall()
        events = conn.execute(
            "SELECT now() - e.created_at, e.type, e.node_id, e.payload FROM orchestrator_events e"
            " JOIN agent_runs r ON r.id = e.run_id"
            " WHERE r.status NOT IN ('SUCCESS', 'FAILED', 'CANCELLED') ORDER BY e.id"
        ).fetchall()
    return [*runs, *(("event", *row) for row in events)]


def run_rows(url: str) -> dict[str, str]:
    """Every run in the database, by id: also those of requests that answered 503 after
    their row was written."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        return dict(conn.execute("SELECT id::text, status FROM agent_runs").fetchall())


def failures_by_code(url: str) -> dict[str, int]:
    with psycopg.connect(url, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT error_code, count(*) FROM agent_runs WHERE status = 'FAILED'"
            " GROUP BY error_code ORDER BY error_code"
        ).fetchall()
    return {code or "-": count for code, count in rows}


def test_f3_postgres_restart_under_load_answers_503_and_loses_no_run(
    cluster, private_redis, tmp_path
):
    db_url = cluster.createdb("acp")
    env = project_env(
        DATABASE_URL=db_url,
        REDIS_URL=private_redis.url,
        CELERY_BROKER_URL=private_redis.url,
        AGENT_HANDLER_MODULES=HANDLERS,
        NODE_AUTOREGISTER="true",
        RUN_LEASE_SECONDS=str(FLEET["lease_s"]),
    )
    seeded = database_seed(
        env,
        {
            "organization": "faults",
            "agents": [
                {
                    "name": "Sleeper",
                    "handler": "test-sleep",
                    "intents": ["nap"],
                    "config": {"rate_limit": {"limit": 1_000_000}, "retry": {"base_delay_ms": 1}},
                }
            ],
            "config": {"nodes": FLEET},
        },
    )

    def submit(mode: str):
        def request(http, i):
            return http.post(
                "/api/orchestrate",
                json={"intent": "nap", "payload": {"sleep_ms": 10}, "mode": mode},
            )

        return request

    recent: list[str] = []

    def read(http, i):
        # A run accepted a moment ago (or the list, before there is one).
        target = f"/api/runs/{recent[-1]}/" if recent else "/api/runs/"
        return http.get(target)

    def remember(answer):
        if answer.submission and answer.run_id and answer.status in (200, 202):
            recent.append(answer.run_id)

    load = Load("", seeded["key"], {})  # replaced once the servers are up
    api = ApiServer(env, tmp_path / "api.log")
    worker = CeleryWorker(env, tmp_path / "worker.log", f"f3-{uuid.uuid4().hex[:6]}")
    beat = CeleryBeat(env, tmp_path / "beat.log", tmp_path / "beat-schedule")
    with scenario("F3", "PostgreSQL restart") as figures:
        try:
            api.start()
            worker.start()
            beat.start()
            pids = (api.pid, worker.pid)
            clients = {f"async-{n}": submit("async") for n in range(ASYNC_CLIENTS)}
            clients["sync"] = submit("sync")
            clients["reader"] = read
            load = Load(api.base_url, seeded["key"], clients, on_answer=remember)
            load.start("before")
            time.sleep(BEFORE_S)
            load.phase = "down"
            stopped = time.monotonic()
            cluster.stop("fast")
            time.sleep(DOWN_S)
            cluster.start()
            figures["database down (s)"] = round(time.monotonic() - stopped, 1)
            load.phase = "after"
            time.sleep(AFTER_S)
            load.stop()
            accepted = load.accepted_run_ids()

            # Drained by the same processes: the worker's retries, beat's reaper.
            budget = FLEET["pending_timeout_s"] * FLEET["max_attempts"] + 60
            rows: dict[str, str] = {}

            def all_terminal() -> bool:
                rows.clear()
                rows.update(run_rows(db_url))
                return accepted <= rows.keys() and set(rows.values()) <= TERMINAL

            # On time out the figures and assertions below say which runs did not end.
            with contextlib.suppress(AssertionError):
                wait_until(all_terminal, timeout=budget, what="every run to end")
            still_running = (api.alive(), worker.alive())
            stuck = stuck_runs(db_url)
            failed = failures_by_code(db_url)
        finally:
            load.stop()
            beat.stop()
            worker.stop()
            api.stop()

        answers = load.answers
        failures = [a for a in answers if a.status is not None and a.status >= 400]
        server_errors = [a for a in answers if a.status is not None and a.status >= 500]
        outside = [
            a
            for a in server_errors
            if not (
                a.status == 503
                and a.code == "SERVICE_UNAVAILABLE"
                and a.envelope
                and a.retry_after is not None
            )
        ]
        after = [a for a in answers if a.phases == frozenset({"after"})]
        statuses = Counter(rows.get(run_id, "missing") for run_id in accepted)
        figures.update(
            {
                "clients": len(clients),
                "requests": len(answers),
                "requests by outcome": load.by_outcome(),
                "requests by outcome while down": load.by_outcome(
                    [a for a in answers if "down" in a.phases]
                ),
                "requests by outcome after the restart": load.by_outcome(after),
                "requests without an answer": sum(a.status is None for a in answers),
                "non-JSON answers": sum(a.status is not None and not a.json for a in answers),
                "5xx outside the contract (503 SERVICE_UNAVAILABLE + Retry-After)": len(outside),
                "accepted runs": len(accepted),
                "accepted runs in the database": sum(r in rows for r in accepted),
                "run status after recovery": dict(sorted(statuses.items())),
                "non-terminal runs after recovery": sum(
                    rows.get(r) not in TERMINAL for r in accepted
                ),
                "runs in the database (any answer)": len(rows),
                "non-terminal runs in the database (any answer)": sum(
                    status not in TERMINAL for status in rows.values()
                ),
                "failed runs by error code": failed,
                "API and worker processes restarted": sum(
                    not alive or pid != before
                    for alive, pid, before in zip(
                        still_running, (api.pid, worker.pid), pids, strict=True
                    )
                ),
            }
        )

        assert not [a for a in answers if a.status is None], "requests left unanswered"
        assert all(a.json and a.envelope for a in failures), "a failure outside the envelope"
        assert not outside, load.by_outcome(outside)
        # The outage was seen, and answered as the contract says.
        assert any(a.status == 503 for a in answers if "down" in a.phases)
        # Recovered without restarting anything: after the restart, only successes.
        assert after and all(a.status in (200, 202) for a in after), load.by_outcome(after)
        assert all(still_running) and (api.pid, worker.pid) == pids
        assert figures["accepted runs in the database"] == len(accepted) > 0
        assert figures["non-terminal runs after recovery"] == 0, stuck
        assert figures["non-terminal runs in the database (any answer)"] == 0, stuck
        # The handler always succeeds: a run submitted once the database was back (and so
        # never touched by the outage) ends SUCCESS.
        later = {a.run_id for a in after if a.submission}
        assert later and all(rows[run_id] == "SUCCESS" for run_id in later), failed
