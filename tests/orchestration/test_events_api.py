"""GET /api/orchestration/events: scoping, filters, "after" paging; and retention."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from agents.choices import MemberRole, Scope
from agents.services import api_key_create
from orchestration import bus
from orchestration.bus.retention import events_prune
from orchestration.choices import EventType
from orchestration.models import OrchestratorEvent
from orchestration.services.config import config_update
from orchestration.tasks import events_prune as events_prune_task
from tests.factories import MemberFactory, UserFactory

pytestmark = pytest.mark.django_db

URL = "/api/orchestration/events"


@pytest.fixture
def events(tenant_a, tenant_b, make_agent):
    alpha = make_agent("Alpha", "test-sleep", intents=["nap"])
    beta = make_agent("Beta", "test-sleep", intents=["doze"])
    return {
        "a1": bus.publish(
            EventType.AGENT_REGISTERED, {}, organization=tenant_a.organization, agent=alpha
        ),
        "fleet": bus.publish(EventType.NODE_REGISTERED, {"node": "n1"}, node="n1"),
        "b1": bus.publish(EventType.AGENT_MESSAGE, {}, organization=tenant_b.organization),
        "a2": bus.publish(
            EventType.CIRCUIT_OPENED, {}, organization=tenant_a.organization, agent=beta
        ),
        "a3": bus.publish(
            EventType.AGENT_MESSAGE, {}, organization=tenant_a.organization, agent=alpha
        ),
    }


def ids(response) -> list[int]:
    assert response.status_code == 200, response.json()
    return [event["id"] for event in response.json()["events"]]


def member_client(tenant, role: str) -> APIClient:
    member = MemberFactory(organization=tenant.organization, role=role, user=UserFactory())
    client = APIClient()
    client.force_login(member.user)
    return client


def test_an_organization_sees_its_own_events_in_order(tenant_a, tenant_b, events):
    response = tenant_a.client.get(URL)
    assert ids(response) == [events["a1"].pk, events["a2"].pk, events["a3"].pk]
    body = response.json()
    assert body["success"] is True
    assert body["count"] == 3
    assert body["next"] == events["a3"].pk
    first = body["events"][0]
    assert first["type"] == "agent.registered"
    assert first["organization"] == str(tenant_a.organization.pk)
    assert first["agent"] == str(events["a1"].agent_id)
    assert set(first) == {
        "id",
        "type",
        "organization",
        "agent",
        "run",
        "node",
        "payload",
        "createdAt",
    }
    assert ids(tenant_b.client.get(URL)) == [events["b1"].pk]


def test_after_pages_through_and_next_is_the_cursor(tenant_a, events):
    page = tenant_a.client.get(URL, {"limit": 2}).json()
    assert [e["id"] for e in page["events"]] == [events["a1"].pk, events["a2"].pk]
    rest = tenant_a.client.get(URL, {"after": page["next"], "limit": 2}).json()
    assert [e["id"] for e in rest["events"]] == [events["a3"].pk]
    empty = tenant_a.client.get(URL, {"after": rest["next"]}).json()
    assert empty["events"] == [] and empty["next"] == rest["next"]


def test_filters_by_type_and_agent(tenant_a, events):
    assert ids(tenant_a.client.get(URL, {"type": "agent.message"})) == [events["a3"].pk]
    assert ids(tenant_a.client.get(URL, {"agent": "alpha"})) == [
        events["a1"].pk,
        events["a3"].pk,
    ]
    assert ids(tenant_a.client.get(URL, {"agent": "beta", "type": "circuit.opened"})) == [
        events["a2"].pk
    ]


@pytest.mark.parametrize(
    "params, field",
    [
        ({"after": "yesterday"}, "after"),
        ({"after": -1}, "after"),
        ({"type": "run.exploded"}, "type"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"agent": "nobody"}, "agent"),
        ({"organization": "org-b"}, "organization"),
    ],
)
def test_bad_parameters_are_400_with_the_field_named(tenant_a, tenant_b, events, params, field):
    response = tenant_a.client.get(URL, params)
    assert response.status_code == 400
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == "INVALID_REQUEST"
    assert field in body["error"]["details"]


def test_another_organizations_agent_is_unknown(tenant_b, events):
    response = tenant_b.client.get(URL, {"agent": "alpha"})
    assert response.status_code == 400
    assert "agent" in response.json()["error"]["details"]


def test_operators_see_fleet_events_viewers_and_keys_do_not(tenant_a, events):
    own = [events["a1"].pk, events["a2"].pk, events["a3"].pk]
    with_fleet = sorted([*own, events["fleet"].pk])
    for role in (MemberRole.OPERATOR, MemberRole.ADMIN, MemberRole.OWNER):
        assert ids(member_client(tenant_a, role).get(URL)) == with_fleet, role
    assert ids(member_client(tenant_a, MemberRole.VIEWER).get(URL)) == own
    assert ids(tenant_a.client.get(URL)) == own


def test_nodes_and_staff_see_every_event(tenant_a, tenant_b, events, settings):
    settings.ORCHESTRATOR_NODE_TOKEN = "node_secret"
    node = APIClient()
    node.credentials(HTTP_AUTHORIZATION="Bearer node_secret")
    everything = sorted(e.pk for e in events.values())
    assert ids(node.get(URL)) == everything
    assert ids(node.get(URL, {"organization": "org-b"})) == [events["b1"].pk]
    assert ids(node.get(URL, {"type": "node.registered"})) == [events["fleet"].pk]

    staff = APIClient()
    staff.force_login(UserFactory(is_staff=True))
    assert ids(staff.get(URL)) == everything


def test_callers_need_credentials_and_the_read_scope(tenant_a, anonymous_client, events):
    response = anonymous_client.get(URL)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "UNAUTHENTICATED"

    issued = api_key_create(
        organization=tenant_a.organization, name="agents-only", scopes=[Scope.AGENTS_READ]
    )
    limited = APIClient()
    limited.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.raw_key}")
    response = limited.get(URL)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "FORBIDDEN"


def test_the_stream_needs_the_asgi_server(tenant_a):
    response = tenant_a.client.get(f"{URL}/stream")
    assert response.status_code == 501
    assert response.json()["error"]["code"] == "NOT_IMPLEMENTED"


# --- retention ---------------------------------------------------------------------------


def aged(days: float, count: int) -> list[int]:
    created_at = timezone.now() - timedelta(days=days)
    return [
        OrchestratorEvent.objects.create(type=EventType.AGENT_MESSAGE, created_at=created_at).pk
        for _ in range(count)
    ]


def test_prune_deletes_only_old_events_in_batches():
    old = aged(40, 7)
    recent = aged(10, 3)
    with CaptureQueriesContext(connection) as queries:
        result = events_prune(days=30, batch_size=3)
    deletes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("DELETE")]
    assert (result.deleted, result.batches) == (7, 3)
    assert len(deletes) == 3
    assert all("LIMIT 3" in sql for sql in deletes)
    assert sorted(OrchestratorEvent.objects.values_list("id", flat=True)) == recent
    assert not OrchestratorEvent.objects.filter(pk__in=old).exists()


def test_prune_command_prints_counts_and_dry_run_deletes_nothing(capsys):
    aged(40, 5)
    aged(1, 2)
    call_command("prune_events", "--days", "30", "--batch", "2", "--dry-run")
    assert "5 event(s) older than 30 day(s)" in capsys.readouterr().out
    assert OrchestratorEvent.objects.count() == 7

    call_command("prune_events", "--days", "30", "--batch", "2")
    out = capsys.readouterr().out
    assert "batch 3: 1 event(s) deleted" in out
    assert "5 event(s) older than 30 day(s)" in out and "3 batch(es)" in out
    assert OrchestratorEvent.objects.count() == 2


def test_the_retention_defaults_to_the_live_configuration():
    aged(40, 1)
    aged(10, 1)
    assert events_prune_task() == {"deleted": 1, "batches": 1}
    config_update(document={"events": {"retention_days": 5}}, partial=True, actor="test")
    events_prune_task()
    assert list(OrchestratorEvent.objects.values_list("type", flat=True)) == [
        EventType.CONFIG_UPDATED
    ]
