"""GET /api/runs/ and GET /api/orchestration/metrics stay O(page) / O(window) as runs pile up.

The statements one request runs are pinned and must not grow with the number of runs,
agents or pages; no statement counts the whole table; the run list's order is read from an
index rather than sorted (bench/http_api.py measures the same at 1M runs).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework import serializers

from config.pagination import NewestFirstCursorPagination
from runs import selectors
from runs.api.serializers import RunListSerializer
from runs.choices import RunStatus
from runs.models import AgentRun
from tests.factories import AgentFactory, RunFactory

pytestmark = pytest.mark.django_db

RUNS = "/api/runs/"
METRICS = "/api/orchestration/metrics"
# An API key request: the key (with its organization), then the page itself.
LIST_QUERIES = 2
# The key, active runs, the 24 h count, the per-agent hour, the nodes.
METRICS_QUERIES = 5


def runs_add(agent, count: int, *, ago: timedelta = timedelta(0), status=RunStatus.SUCCESS):
    """`count` runs of `agent` in one INSERT, created `ago` before now (all at that instant)."""
    runs = AgentRun.objects.bulk_create(
        AgentRun(
            organization=agent.organization,
            agent=agent,
            intent="summarize",
            status=status,
            duration_ms=10 * (i + 1),
        )
        for i in range(count)
    )
    if ago:
        # created_at is auto_now_add: moved afterwards, to one shared instant (ties).
        AgentRun.objects.filter(pk__in=[r.pk for r in runs]).update(created_at=timezone.now() - ago)
    return runs


def warm(client, path: str) -> None:
    # The live configuration is read once per interval, a key's last use once a minute.
    assert client.get(path).status_code == 200
    assert client.get(path).status_code == 200


def statements(client, path: str) -> tuple[list[str], dict]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    assert response.status_code == 200, response.content
    return [q["sql"] for q in captured.captured_queries], response.json()


def test_list_query_count_does_not_grow_with_runs(tenant_a, tenant_b, django_assert_num_queries):
    agent = AgentFactory(organization=tenant_a.organization)
    runs_add(agent, 3)
    warm(tenant_a.client, RUNS)
    with django_assert_num_queries(LIST_QUERIES):
        tenant_a.client.get(RUNS)

    for i in range(4):
        runs_add(AgentFactory(organization=tenant_a.organization), 60, ago=timedelta(hours=i))
    runs_add(AgentFactory(organization=tenant_b.organization), 100)
    with django_assert_num_queries(LIST_QUERIES):
        body = tenant_a.client.get(RUNS).json()
    assert len(body["results"]) == 50
    # A page deep into the history, through the cursor, costs the same.
    with django_assert_num_queries(LIST_QUERIES):
        tenant_a.client.get(body["next"])


def test_list_never_counts_and_reads_one_bounded_page(tenant_a):
    agent = AgentFactory(organization=tenant_a.organization)
    runs_add(agent, 30)
    warm(tenant_a.client, RUNS)
    sql, body = statements(tenant_a.client, RUNS + "?page_size=10")
    assert len(body["results"]) == 10
    assert not any("COUNT(" in s.upper() for s in sql)
    (page,) = [s for s in sql if 'FROM "agent_runs"' in s]
    assert 'ORDER BY "agent_runs"."created_at" DESC, "agent_runs"."id" DESC' in page
    assert "LIMIT 11" in page  # the page and one more, to know whether there is a next


def test_cursor_walk_returns_every_run_once_in_order_across_ties(tenant_a, tenant_b):
    agent = AgentFactory(organization=tenant_a.organization)
    # Three groups of runs sharing one created_at each: the id breaks the ties.
    created = [
        *runs_add(agent, 9, ago=timedelta(minutes=1)),
        *runs_add(agent, 9, ago=timedelta(minutes=2)),
        *runs_add(agent, 9, ago=timedelta(minutes=3)),
        *runs_add(agent, 4),
    ]
    runs_add(AgentFactory(organization=tenant_b.organization), 20)
    expected = list(
        AgentRun.objects.filter(organization=tenant_a.organization)
        .order_by("-created_at", "-id")
        .values_list("id", flat=True)
    )
    assert len(expected) == len(created)

    seen, url, pages = [], RUNS + "?page_size=4", 0
    while url:
        body = tenant_a.client.get(url).json()
        seen += [row["id"] for row in body["results"]]
        url, pages = body["next"], pages + 1
    assert seen == [str(pk) for pk in expected]
    assert pages == 8


def test_list_order_is_read_from_an_index_not_sorted(tenant_a, tenant_b):
    """With sorting priced out, the page still needs no sort: an index holds the order."""
    runs_add(AgentFactory(organization=tenant_a.organization), 40)
    runs_add(AgentFactory(organization=tenant_b.organization), 40)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE agent_runs")
    warm(tenant_a.client, RUNS)
    sql, _ = statements(tenant_a.client, RUNS)
    (page,) = [s for s in sql if 'FROM "agent_runs"' in s]
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_sort = off")
        cursor.execute("SET LOCAL enable_incremental_sort = off")
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + page)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "run_org_created_id_idx" in plan, plan
    assert "Sort" not in plan, plan


def test_the_list_index_matches_the_pagination_order():
    """If the cursor's order changes, the index that serves it must change with it."""
    (index,) = [i for i in AgentRun._meta.indexes if i.name == "run_org_created_id_idx"]
    assert index.fields == ["organization", *NewestFirstCursorPagination.ordering]


def test_metrics_query_count_does_not_grow_with_runs_or_agents(tenant_a, django_assert_num_queries):
    runs_add(AgentFactory(organization=tenant_a.organization), 2)
    warm(tenant_a.client, METRICS)
    with django_assert_num_queries(METRICS_QUERIES):
        before = tenant_a.client.get(METRICS).json()["metrics"]

    for i in range(6):
        agent = AgentFactory(organization=tenant_a.organization)
        runs_add(agent, 40, ago=timedelta(minutes=5 + i))  # in the hour
        runs_add(agent, 40, ago=timedelta(hours=3 + i))  # in the day only
        runs_add(agent, 40, ago=timedelta(days=3 + i))  # history, in no window
        runs_add(agent, 1, status=RunStatus.RUNNING)
    with django_assert_num_queries(METRICS_QUERIES):
        after = tenant_a.client.get(METRICS).json()["metrics"]

    assert before["requestsLastHour"] == 2
    assert after["requestsLastHour"] == 2 + 6 * 41
    assert after["totalRequestsHandled"] == 2 + 6 * 81
    assert after["activeRequests"] == 6
    assert len(after["agents"]) == 7


def test_metrics_read_only_windows_of_the_run_table(tenant_a):
    """Every statement on agent_runs is bounded by a time window or the active statuses."""
    runs_add(AgentFactory(organization=tenant_a.organization), 5)
    warm(tenant_a.client, METRICS)
    sql, _ = statements(tenant_a.client, METRICS)
    on_runs = [s for s in sql if 'FROM "agent_runs"' in s]
    assert len(on_runs) == 3
    for statement in on_runs:
        windowed = '"agent_runs"."created_at" >=' in statement
        active_only = '"agent_runs"."status" IN' in statement
        assert windowed or active_only, statement


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris"])
def test_the_list_representation_is_exactly_drfs(tenant_a, zone):
    """The run list builds its rows directly; they must equal DRF's field-by-field output."""
    agent = AgentFactory(organization=tenant_a.organization, name="Writer Agent")
    now = timezone.now()
    first = RunFactory(
        agent=agent,
        status=RunStatus.FAILED,
        error_code="AGENT_TIMEOUT",
        error_message="ran past 30 s",
        objective="a goal",
        attempt=2,
        node_id="node-1",
        idempotency_key="key-1",
        metrics={"durationMs": 5},
        queued_at=now,
        started_at=now.replace(microsecond=0),
        completed_at=now + timedelta(seconds=1),
        duration_ms=1000,
    )
    RunFactory(agent=agent, retry_of=first, idempotency_key=None, metrics={})
    runs = list(selectors.run_list_page().filter(organization=tenant_a.organization))
    assert len(runs) == 2
    with timezone.override(zone):
        for run in runs:
            serializer = RunListSerializer(run)
            generic = serializers.ModelSerializer.to_representation(serializer, run)
            fast = serializer.data
            assert list(fast.items()) == list(generic.items())
