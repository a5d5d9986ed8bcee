"""Circuit state over the API and the operators' force command."""

from __future__ import annotations

import pytest

from orchestration.models import OrchestratorEvent
from runs.models import AgentRun
from tests.orchestration.handlers import CALLS

pytestmark = pytest.mark.django_db


def orchestrate(tenant, intent):
    return tenant.client.post("/api/orchestrate", {"intent": intent}, format="json")


def test_circuits_list_shows_every_agent_and_opens_after_failures(tenant_a, make_agent):
    make_agent("Refuser", "test-fail", intents=["refuse"])
    make_agent("Sleeper", "test-sleep", intents=["nap"])
    body = tenant_a.client.get("/api/orchestration/circuits").json()
    assert body["success"] is True
    assert {c["agent"]: c["state"] for c in body["circuits"]} == {
        "Refuser": "CLOSED",
        "Sleeper": "CLOSED",
    }
    for _ in range(3):
        orchestrate(tenant_a, "refuse")
    circuits = {
        c["agent"]: c for c in tenant_a.client.get("/api/orchestration/circuits").json()["circuits"]
    }
    assert circuits["Refuser"]["state"] == "OPEN"
    assert circuits["Refuser"]["openedAt"]
    assert circuits["Sleeper"]["state"] == "CLOSED"
    opened = OrchestratorEvent.objects.get(type="circuit.opened")
    # The event names the run that caused the transition, and that run records it.
    assert opened.run_id is not None
    assert {"policy": "circuit", "transition": "OPEN"} in opened.run.meta["policies"]


def test_operator_forces_open_then_releases(tenant_a, make_agent):
    make_agent("Sleeper", "test-sleep", intents=["nap"])
    response = tenant_a.client.post(
        "/api/orchestration/circuits/sleeper/force", {"state": "OPEN"}, format="json"
    )
    assert response.status_code == 200, response.json()
    assert response.json()["state"] == "FORCED_OPEN"
    refused = orchestrate(tenant_a, "nap")
    assert refused.status_code == 502
    assert refused.json()["error"]["code"] == "CIRCUIT_OPEN"
    assert int(refused["Retry-After"]) >= 1
    assert CALLS[refused.json()["runId"]] == 0
    assert AgentRun.objects.get(pk=refused.json()["runId"]).error_code == "CIRCUIT_OPEN"

    released = tenant_a.client.post(
        "/api/orchestration/circuits/sleeper/force", {"state": None}, format="json"
    )
    assert released.json()["state"] == "CLOSED"
    assert orchestrate(tenant_a, "nap").status_code == 200
    types = list(
        OrchestratorEvent.objects.filter(type__startswith="circuit.").values_list("type", flat=True)
    )
    assert types == ["circuit.opened", "circuit.closed"]


def test_force_needs_agents_write_and_stays_in_the_organization(tenant_a, tenant_b, make_agent):
    from rest_framework.test import APIClient

    from agents.services import api_key_create

    make_agent("Secret", "test-sleep", intents=["nap"], tenant=tenant_b)
    response = tenant_a.client.post(
        "/api/orchestration/circuits/secret/force", {"state": "OPEN"}, format="json"
    )
    assert response.status_code == 404
    make_agent("Mine", "test-sleep", intents=["x"])
    reader = api_key_create(organization=tenant_a.organization, name="r", scopes=["agents:read"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {reader.raw_key}")
    assert client.get("/api/orchestration/circuits").status_code == 200
    forbidden = client.post(
        "/api/orchestration/circuits/mine/force", {"state": "OPEN"}, format="json"
    )
    assert forbidden.status_code == 403
    bad = tenant_a.client.post(
        "/api/orchestration/circuits/mine/force", {"state": "HALF"}, format="json"
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "INVALID_REQUEST"


def test_agent_admin_shows_the_circuit_and_forces_it(admin_client, tenant_a, make_agent):
    agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
    page = admin_client.get(f"/admin/agents/agent/{agent.pk}/change/")
    assert page.status_code == 200
    assert b"CLOSED" in page.content
    admin_client.post(
        "/admin/agents/agent/",
        {"action": "force_open", "_selected_action": [str(agent.pk)]},
    )
    page = admin_client.get(f"/admin/agents/agent/{agent.pk}/change/")
    assert b"FORCED_OPEN" in page.content


def test_bad_input_failures_do_not_open_the_circuit(tenant_a, make_agent):
    make_agent("Picky", "test-bad-input", intents=["picky"])
    for _ in range(5):
        response = orchestrate(tenant_a, "picky")
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "AGENT_EXECUTION_FAILED"
    circuits = tenant_a.client.get("/api/orchestration/circuits").json()["circuits"]
    assert circuits[0]["state"] == "CLOSED"
