"""The statements every run executes are prepared on the server (runs.sql.prepared_cursor).

PostgreSQL plans them once per connection instead of on every run. What must hold: after a
few runs on a connection its prepared statements include the run's insert and finish (and
an async run's claim), the statements still count as queries (the pinned counts of
test_query_counts rely on it), and with the threshold off (DATABASE_PREPARE_THRESHOLD=-1)
nothing is prepared.
"""

from __future__ import annotations

import pytest
import redis
from django.db import connection
from django.test.utils import CaptureQueriesContext

from orchestration.tasks import execute_run
from runs.sql import prepared_cursor
from tests.orchestration.workers import private_queue

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("redis_policies"),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="prepared statements: PostgreSQL"),
]

RUNS = 8  # above the default threshold (5)


def _prepared() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


def _has(statements: list[str], prefix: str) -> bool:
    return any(s.lstrip().startswith(prefix) for s in statements)


@pytest.fixture
def sleeper(tenant_a, make_agent):
    make_agent("Sleeper", "test-sleep", intents=["nap"])
    # A connection of this test's own, so what it prepared is what these runs prepared.
    connection.close()
    return tenant_a


def test_a_sync_run_s_statements_are_prepared(sleeper):
    for _ in range(RUNS):
        response = sleeper.client.post("/api/orchestrate", {"intent": "nap"}, format="json")
        assert response.status_code == 200, response.content
    statements = _prepared()
    assert _has(statements, 'INSERT INTO "agent_runs"'), statements
    assert _has(statements, 'WITH u AS (UPDATE "agent_runs"'), statements


def test_an_async_run_s_claim_is_prepared(sleeper, settings):
    settings.RUN_DEFAULT_QUEUE = private_queue()  # sent, and read by nobody
    try:
        for _ in range(RUNS):
            response = sleeper.client.post(
                "/api/orchestrate", {"intent": "nap", "mode": "async"}, format="json"
            )
            assert response.status_code == 202, response.content
            assert execute_run(response.json()["runId"]) == "SUCCESS"
    finally:
        redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(settings.RUN_DEFAULT_QUEUE)
    statements = _prepared()
    assert _has(statements, 'UPDATE "agent_runs" SET status = $1'), statements
    assert _has(statements, 'WITH inserted AS (INSERT INTO "agent_runs"'), statements


def test_prepared_statements_are_counted_and_logged_as_queries(sleeper):
    connection.ensure_connection()
    threshold = connection.connection.prepare_threshold
    with CaptureQueriesContext(connection) as captured:
        for value in range(threshold + 2):  # the last ones run the prepared statement
            with prepared_cursor() as cursor:
                cursor.execute("SELECT %s::int + 1", [value])
                assert cursor.fetchone() == (value + 1,)
    assert [q["sql"] for q in captured.captured_queries] == ["SELECT $1::int + 1"] * (threshold + 2)
    assert _has(_prepared(), "SELECT $1::int + 1")


def test_nothing_is_prepared_with_the_threshold_off(sleeper):
    connection.ensure_connection()
    connection.connection.prepare_threshold = None  # DATABASE_PREPARE_THRESHOLD=-1
    try:
        for _ in range(RUNS):
            response = sleeper.client.post("/api/orchestrate", {"intent": "nap"}, format="json")
            assert response.status_code == 200, response.content
        assert _prepared() == []
    finally:
        connection.close()
