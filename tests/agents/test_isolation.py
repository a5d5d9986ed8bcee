"""A key of organization A sees nothing of organization B: every object answers 404."""

from __future__ import annotations

import pytest

from tests.factories import AgentFactory, CapabilityFactory, DatasetFactory, RunFactory, ToolFactory


@pytest.fixture
def b_objects(tenant_b):
    agent = AgentFactory(organization=tenant_b.organization, name="Secret", slug="secret")
    CapabilityFactory(agent=agent, name="classified")
    return {
        "agents": [str(agent.pk), agent.slug],
        "tools": [str(ToolFactory(organization=tenant_b.organization, slug="b-tool").pk), "b-tool"],
        "datasets": [
            str(DatasetFactory(organization=tenant_b.organization, slug="b-data").pk),
            "b-data",
        ],
        "runs": [str(RunFactory(agent=agent).pk)],
    }


@pytest.mark.django_db
@pytest.mark.parametrize("resource", ["agents", "tools", "datasets", "runs"])
def test_foreign_objects_answer_404_for_every_method(tenant_a, b_objects, resource):
    for ident in b_objects[resource]:
        url = f"/api/{resource}/{ident}/"
        response = tenant_a.client.get(url)
        assert response.status_code == 404, url
        assert response.json()["error"]["code"] == "NOT_FOUND"
        if resource != "runs":
            assert tenant_a.client.patch(url, {"name": "x"}, format="json").status_code == 404
            assert tenant_a.client.delete(url).status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize("resource", ["agents", "tools", "datasets", "runs"])
def test_lists_hold_no_foreign_rows(tenant_a, tenant_b, b_objects, resource):
    response = tenant_a.client.get(f"/api/{resource}/")
    assert response.status_code == 200
    assert response.json()["results"] == []
    own = tenant_b.client.get(f"/api/{resource}/").json()["results"]
    assert len(own) == 1


@pytest.mark.django_db
def test_run_filter_by_foreign_agent_finds_nothing(tenant_a, b_objects):
    response = tenant_a.client.get("/api/runs/", {"agent": "secret"})
    assert response.status_code == 200
    assert response.json()["results"] == []


@pytest.mark.django_db
def test_created_agent_lands_in_the_callers_organization_whatever_the_body_says(tenant_a, tenant_b):
    response = tenant_a.client.post(
        "/api/agents/",
        {
            "name": "Writer",
            "intents": ["summarize"],
            "organization": str(tenant_b.organization.pk),
            "id": "00000000-0000-0000-0000-000000000001",
            "created_at": "2000-01-01T00:00:00Z",
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["slug"] == "writer"
    assert body["intents"] == ["summarize"]
    assert body["id"] != "00000000-0000-0000-0000-000000000001"
    assert not body["created_at"].startswith("2000")
    from agents.models import Agent

    agent = Agent.objects.get(pk=body["id"])
    assert agent.organization == tenant_a.organization
    assert tenant_b.client.get(f"/api/agents/{body['id']}/").status_code == 404


@pytest.mark.django_db
def test_agent_addressed_by_id_or_slug_and_updated(tenant_a):
    agent = AgentFactory(organization=tenant_a.organization, name="Writer", slug="writer")
    assert tenant_a.client.get(f"/api/agents/{agent.pk}/").json()["slug"] == "writer"
    response = tenant_a.client.patch(
        "/api/agents/writer/",
        {"intents": ["summarize", "draft"], "version": "2.0.0"},
        format="json",
    )
    assert response.status_code == 200, response.json()
    assert sorted(response.json()["intents"]) == ["draft", "summarize"]
    assert response.json()["version"] == "2.0.0"


@pytest.mark.django_db
def test_duplicate_agent_name_answers_400_in_the_envelope(tenant_a):
    AgentFactory(organization=tenant_a.organization, name="Writer", slug="writer")
    response = tenant_a.client.post("/api/agents/", {"name": "Writer"}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_REQUEST"
    assert "name" in response.json()["error"]["details"]
