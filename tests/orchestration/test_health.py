"""GET /api/orchestration/health and /readyz against real (and really unreachable) services."""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
from django.db import OperationalError, connections
from django.utils import timezone
from rest_framework.test import APIClient

from agents.authentication import ApiKeyAuthentication
from orchestration.choices import NodeStatus
from orchestration.models import OrchestratorNode
from orchestration.policies import RedisPolicyStore, policy_store_reset
from orchestration.services import health
from orchestration.services.circuits import circuit_force
from runs.choices import RunStatus
from tests.factories import AgentFactory, RunFactory

pytestmark = pytest.mark.django_db

HEALTH = "/api/orchestration/health"


def closed_port() -> int:
    """A local port nothing listens on (bound for a moment by us, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def node_client(settings):
    settings.ORCHESTRATOR_NODE_TOKEN = "node_test-secret"
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer node_test-secret")
    return client


@pytest.fixture
def unreachable_database():
    """A real PostgreSQL connection object aimed at a port where no server listens."""
    default = connections["default"]
    settings_dict = {
        **default.settings_dict,
        "HOST": "127.0.0.1",
        "PORT": str(closed_port()),
        "OPTIONS": {**default.settings_dict.get("OPTIONS", {}), "connect_timeout": 1},
    }
    wrapper = type(default)(settings_dict, alias="unreachable")
    yield wrapper
    wrapper.close()


def check_statuses(body):
    return {name: check["status"] for name, check in body["health"]["checks"].items()}


def test_healthy_with_every_service_up(node_client):
    now = timezone.now()
    OrchestratorNode.objects.create(node_id="n1", region="eu", last_heartbeat_at=now, capacity=2)
    response = node_client.get(HEALTH)
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["success"] is True
    assert body["health"]["overall"] == "healthy", body["health"]["checks"]
    assert check_statuses(body) == {
        "database": "up",
        "redis": "up",
        "broker": "up",
        "nodes": "up",
        "policyStore": "up",
        "runs": "up",
        "circuits": "up",
    }
    for check in body["health"]["checks"].values():
        assert check["latencyMs"] >= 0
        assert check["detail"]
    assert body["health"]["nodes"][0]["id"] == "n1"
    assert body["health"]["nodes"][0]["fresh"] is True
    assert body["health"]["metrics"]["freshNodes"] == 1
    assert body["health"]["checks"]["policyStore"]["backend"] == "local"


def test_embedded_mode_is_healthy(node_client, settings):
    settings.REDIS_URL = None
    settings.CELERY_BROKER_URL = "memory://"
    body = node_client.get(HEALTH).json()
    assert body["health"]["overall"] == "healthy"
    assert body["health"]["checks"]["redis"]["status"] == "embedded"
    assert body["health"]["checks"]["broker"]["status"] == "embedded"


def test_degraded_when_redis_is_down(node_client, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"
    response = node_client.get(HEALTH)
    assert response.status_code == 200
    body = response.json()
    assert body["health"]["overall"] == "degraded"
    redis_check = body["health"]["checks"]["redis"]
    assert redis_check["status"] == "down"
    assert "Connection" in redis_check["detail"]
    assert body["health"]["checks"]["database"]["status"] == "up"


def test_degraded_when_the_broker_is_down(node_client, settings):
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{closed_port()}/0"
    body = node_client.get(HEALTH).json()
    assert body["health"]["overall"] == "degraded"
    assert body["health"]["checks"]["broker"]["status"] == "down"


def test_unhealthy_when_the_database_check_fails_never_a_500(
    node_client, monkeypatch, unreachable_database
):
    monkeypatch.setattr(health, "_database_connection", lambda: unreachable_database)
    response = node_client.get(HEALTH)
    assert response.status_code == 503
    body = response.json()
    assert body["success"] is True
    assert body["health"]["overall"] == "unhealthy"
    database = body["health"]["checks"]["database"]
    assert database["status"] == "down"
    assert "OperationalError" in database["detail"]
    # The checks that would read the same database are skipped, not retried.
    assert body["health"]["checks"]["runs"]["status"] == "skipped"
    assert body["health"]["checks"]["nodes"]["status"] == "skipped"


def test_database_down_while_authenticating_an_api_key(tenant_a, monkeypatch, unreachable_database):
    def database_gone(self, request):
        raise OperationalError("connection refused")

    monkeypatch.setattr(ApiKeyAuthentication, "authenticate", database_gone)
    monkeypatch.setattr(health, "_database_connection", lambda: unreachable_database)
    response = tenant_a.client.get(HEALTH)
    assert response.status_code == 503
    body = response.json()
    assert body["health"]["overall"] == "unhealthy"
    # The caller could not be verified: the report names no host, port or error text.
    assert body["health"]["checks"]["database"]["detail"] == "database unreachable"
    assert body["health"]["nodes"] == []


def test_readyz_answers_503_when_the_database_is_unreachable(
    client, monkeypatch, unreachable_database
):
    assert client.get("/readyz").status_code == 200
    monkeypatch.setattr("config.health.connection", unreachable_database)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert client.get("/healthz").status_code == 200


def test_stale_nodes_degrade(node_client):
    now = timezone.now()
    OrchestratorNode.objects.create(node_id="fresh", last_heartbeat_at=now)
    OrchestratorNode.objects.create(node_id="silent", last_heartbeat_at=now - timedelta(minutes=2))
    # Gone for good or failed over: listed, but no reason to page anyone.
    OrchestratorNode.objects.create(
        node_id="left", status=NodeStatus.OFFLINE, last_heartbeat_at=now - timedelta(days=1)
    )
    body = node_client.get(HEALTH).json()
    nodes = body["health"]["checks"]["nodes"]
    assert body["health"]["overall"] == "degraded"
    assert (nodes["status"], nodes["fresh"], nodes["stale"]) == ("degraded", 1, 1)
    assert [n["id"] for n in body["health"]["nodes"]] == ["fresh", "silent"]


def test_runs_stuck_past_their_lease_degrade(node_client):
    now = timezone.now()
    RunFactory(
        status=RunStatus.RUNNING,
        started_at=now - timedelta(minutes=5),
        lease_expires_at=now - timedelta(minutes=1),
        node_id="gone",
    )
    RunFactory(
        status=RunStatus.RUNNING, started_at=now, lease_expires_at=now + timedelta(minutes=1)
    )
    body = node_client.get(HEALTH).json()
    runs = body["health"]["checks"]["runs"]
    assert body["health"]["overall"] == "degraded"
    assert (runs["running"], runs["stuckPastLease"]) == (2, 1)
    assert body["health"]["metrics"]["stuckRuns"] == 1


def test_pending_runs_nobody_picked_up_degrade(node_client):
    RunFactory(status=RunStatus.PENDING, queued_at=timezone.now() - timedelta(hours=1))
    body = node_client.get(HEALTH).json()
    assert body["health"]["checks"]["runs"]["pendingOverdue"] == 1
    assert body["health"]["overall"] == "degraded"


def test_open_circuits_degrade(node_client):
    agent = AgentFactory(name="Flaky")
    circuit_force(agent=agent, state="OPEN", actor="test")
    body = node_client.get(HEALTH).json()
    circuits = body["health"]["checks"]["circuits"]
    assert body["health"]["overall"] == "degraded"
    assert circuits["open"] == 1
    assert "Flaky" in circuits["detail"]
    circuit_force(agent=agent, state=None, actor="test")
    assert node_client.get(HEALTH).json()["health"]["checks"]["circuits"]["open"] == 0


def test_process_local_policy_state_degrades_a_fleet_of_several_nodes(node_client):
    now = timezone.now()
    OrchestratorNode.objects.create(node_id="a", last_heartbeat_at=now)
    body = node_client.get(HEALTH).json()
    assert body["health"]["checks"]["policyStore"]["status"] == "up"
    OrchestratorNode.objects.create(node_id="b", last_heartbeat_at=now)
    store = node_client.get(HEALTH).json()["health"]["checks"]["policyStore"]
    assert store["status"] == "degraded"
    assert "single-process policy state" in store["detail"]


def test_unreachable_shared_policy_store_degrades(node_client):
    store = RedisPolicyStore(f"redis://127.0.0.1:{closed_port()}/0")
    store.circuit_snapshot(agent_key="probe")  # fails, and the store remembers it
    policy_store_reset(store)
    body = node_client.get(HEALTH).json()
    check = body["health"]["checks"]["policyStore"]
    assert body["health"]["overall"] == "degraded"
    assert (check["status"], check["backend"]) == ("degraded", "redis")


def test_any_authenticated_caller_may_read_health(tenant_a, anonymous_client):
    assert tenant_a.client.get(HEALTH).status_code == 200
    assert anonymous_client.get(HEALTH).status_code == 401
