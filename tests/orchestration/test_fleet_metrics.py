"""GET /api/orchestration/metrics: figures from real rows, scoping, and a fixed query count."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from orchestration.choices import NodeStatus
from orchestration.models import OrchestratorNode
from orchestration.services import fleet_metrics as metrics_service
from orchestration.services.fleet_metrics import fleet_metrics, percentile
from runs.choices import RunStatus
from runs.models import AgentRun
from tests.factories import AgentFactory, RunFactory

pytestmark = pytest.mark.django_db

METRICS = "/api/orchestration/metrics"


@pytest.fixture
def node_client(settings):
    settings.ORCHESTRATOR_NODE_TOKEN = "node_test-secret"
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer node_test-secret")
    return client


def finished(agent, duration_ms, status=RunStatus.SUCCESS, **extra):
    now = timezone.now()
    return RunFactory(
        agent=agent,
        status=status,
        started_at=now - timedelta(milliseconds=duration_ms),
        completed_at=now,
        duration_ms=duration_ms,
        **extra,
    )


def age(run, delta):
    AgentRun.objects.filter(pk=run.pk).update(created_at=timezone.now() - delta)


@pytest.fixture
def fleet(tenant_a, tenant_b):
    now = timezone.now()
    OrchestratorNode.objects.create(node_id="fresh", last_heartbeat_at=now)
    OrchestratorNode.objects.create(node_id="silent", last_heartbeat_at=now - timedelta(minutes=5))
    OrchestratorNode.objects.create(node_id="draining", status=NodeStatus.DRAINING)
    OrchestratorNode.objects.create(node_id="left", status=NodeStatus.OFFLINE)

    summarizer = AgentFactory(organization=tenant_a.organization, name="Summarizer")
    for duration in (100, 200, 300, 400):
        finished(summarizer, duration)
    finished(summarizer, 1000, status=RunStatus.FAILED)
    finished(summarizer, 50, status=RunStatus.CANCELLED)  # not counted for success rate
    RunFactory(agent=summarizer, status=RunStatus.RUNNING, started_at=now)
    RunFactory(agent=summarizer, status=RunStatus.PENDING)
    # Two hours old: in the 24 h count, not in the last hour's figures.
    age(finished(summarizer, 99_000), timedelta(hours=2))
    # Two days old: in no figure at all.
    age(finished(summarizer, 99_000), timedelta(days=2))

    translator = AgentFactory(organization=tenant_b.organization, name="Translator")
    finished(translator, 10)
    RunFactory(agent=translator, status=RunStatus.RUNNING, started_at=now)
    return summarizer, translator


def test_fleet_figures_from_real_rows(node_client, fleet):
    response = node_client.get(METRICS)
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["success"] is True
    assert body["timestamp"]
    metrics = body["metrics"]
    assert metrics["scope"] == "fleet"
    assert metrics["totalNodes"] == 3  # OFFLINE has left the fleet
    assert metrics["healthyNodes"] == 1
    assert metrics["activeRequests"] == 2
    assert metrics["pendingBacklog"] == 1
    assert metrics["totalRequestsHandled"] == 11  # created in the last 24 h
    assert metrics["requestsLastHour"] == 10
    # Mean of 100, 200, 300, 400, 1000, 50 and 10 ms.
    assert metrics["averageLatency"] == pytest.approx(2060 / 7, abs=0.1)
    by_agent = {a["agent"]: a for a in metrics["agents"]}
    assert list(by_agent) == ["Summarizer", "Translator"]  # busiest first
    summarizer = by_agent["Summarizer"]
    assert summarizer["runs"] == 8
    assert summarizer["organization"] == "org-a"
    assert summarizer["successRate"] == pytest.approx(0.8)  # 4 of 5 decided
    # percentile_cont over 50, 100, 200, 300, 400, 1000.
    assert summarizer["p50DurationMs"] == 250.0
    assert summarizer["p95DurationMs"] == 850.0
    assert by_agent["Translator"]["successRate"] == 1.0


def test_organization_key_sees_its_own_runs_only(tenant_a, tenant_b, fleet):
    metrics = tenant_a.client.get(METRICS).json()["metrics"]
    assert metrics["scope"] == "organization"
    assert [a["agent"] for a in metrics["agents"]] == ["Summarizer"]
    assert metrics["activeRequests"] == 1
    assert metrics["pendingBacklog"] == 1
    assert metrics["totalRequestsHandled"] == 9
    # Nodes are fleet-wide whoever asks.
    assert metrics["totalNodes"] == 3
    other = tenant_b.client.get(METRICS).json()["metrics"]
    assert [a["agent"] for a in other["agents"]] == ["Translator"]
    assert other["totalRequestsHandled"] == 2


def test_empty_fleet(node_client, anonymous_client):
    metrics = node_client.get(METRICS).json()["metrics"]
    assert metrics["totalNodes"] == 0
    assert metrics["averageLatency"] is None
    assert metrics["agents"] == []
    assert anonymous_client.get(METRICS).status_code == 401


def test_python_percentiles_match_postgresql(fleet):
    """The SQLite fallback, run here against the same rows, gives the same answers."""
    assert connection.vendor == "postgresql"
    with_sql = fleet_metrics()
    original = metrics_service.supports_percentile_cont
    metrics_service.supports_percentile_cont = lambda: False
    try:
        in_python = fleet_metrics()
    finally:
        metrics_service.supports_percentile_cont = original
    assert in_python["agents"] == with_sql["agents"]


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [([], 0.5, None), ([7], 0.95, 7.0), ([1, 2, 3, 4], 0.5, 2.5), ([1, 2, 3, 4], 0.95, 3.85)],
)
def test_percentile_interpolates_like_percentile_cont(values, fraction, expected):
    result = percentile(values, fraction)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


def count_queries(client) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(METRICS).status_code == 200
    return len(captured)


def test_query_count_does_not_grow_with_runs_agents_or_nodes(
    node_client, tenant_a, django_assert_max_num_queries
):
    agent = AgentFactory(organization=tenant_a.organization)
    finished(agent, 10)
    # Warm-up: the live configuration is read once per interval, a key's last use once a minute.
    count_queries(node_client)
    count_queries(tenant_a.client)
    baseline = count_queries(node_client)
    organization_baseline = count_queries(tenant_a.client)

    now = timezone.now()
    for i in range(5):
        more = AgentFactory(organization=tenant_a.organization, name=f"Agent-{i}")
        for duration in range(10, 110, 10):
            finished(more, duration)
        RunFactory(agent=more, status=RunStatus.RUNNING, started_at=now)
        OrchestratorNode.objects.create(node_id=f"node-{i}", last_heartbeat_at=now)

    assert count_queries(node_client) == baseline
    assert count_queries(tenant_a.client) == organization_baseline
    # Node token: no credential lookup; nodes, active runs, 24 h count, per-agent figures.
    with django_assert_max_num_queries(4):
        node_client.get(METRICS)
