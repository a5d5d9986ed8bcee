"""S2: organization A's key against organization B's objects, on every endpoint.

The endpoints come from the OpenAPI schema the application serves, so a new endpoint is
in the matrix the day it is added: a path parameter nobody mapped to an object fails the
test until it is. Every method of every path is tried with B's ids (and slugs where the
path takes them); every list and filter is read with A's key and searched for anything
of B's. Then the writes that try to choose their own organization, status, owner or
timestamps.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest
from django.test import Client
from drf_spectacular.generators import SchemaGenerator

from agents.models import Agent, Dataset, Tool
from orchestration.models import OrchestratorEvent
from runs.choices import RunStatus
from runs.models import AgentRun
from tests.factories import DatasetFactory, RunFactory, ToolFactory
from tests.faults.abuse import ScenarioParts

pytestmark = [pytest.mark.faults, pytest.mark.django_db]

# Path parameter -> which of B's objects it names. Nodes and configuration revisions
# belong to the fleet, not to an organization (API.md): they are listed here as such.
ORG_SCOPED = {
    r"^/api/agents/\{id\}/": "agent",
    r"^/api/tools/\{id\}/": "tool",
    r"^/api/datasets/\{id\}/": "dataset",
    r"^/api/runs/\{id\}/": "run",
    r"^/api/runs/\{run_id\}/": "run",
    r"^/api/orchestration/circuits/\{agent\}/": "agent",
}
FLEET_SCOPED = (
    r"^/api/orchestration/nodes/\{node_id\}",
    r"^/api/orchestration/failover/\{node_id\}",
    r"^/api/orchestration/config/revisions/\{revision_id\}",
)
SUCCESS = range(200, 300)


@pytest.fixture(scope="module")
def s2():
    parts = ScenarioParts.of("S2", "Tenant isolation matrix and mass assignment")
    yield parts
    parts.record()


def _schema_operations() -> list[tuple[str, str]]:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return [
        (path, method.upper())
        for path, item in schema["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    ]


def _body_for(path: str, method: str) -> dict:
    if method in {"POST", "PUT", "PATCH"}:
        # Valid for the catalog writes, so a 404 is about the object, not the body.
        return {"name": f"probe-{uuid.uuid4().hex[:6]}", "state": "OPEN", "value": 1}
    return {}


def _call(client, method: str, url: str, body: dict):
    return getattr(client, method.lower())(url, body or None, format="json")


def test_s2_tenant_isolation_matrix(s2, tenant_a, tenant_b, make_agent):
    # B has one of everything, with history: runs (finished and pending), events, tools.
    agent_b = make_agent("SecretB", "test-sleep", intents=["nap-b"], tenant=tenant_b)
    finished = tenant_b.client.post(
        "/api/orchestrate", {"intent": "nap-b", "payload": {"sleep_ms": 1}}, format="json"
    )
    assert finished.status_code == 200, finished.json()
    run_b = AgentRun.objects.get(pk=finished.json()["runId"])
    pending_b = RunFactory(agent=agent_b, status=RunStatus.PENDING)
    tool_b = ToolFactory(organization=tenant_b.organization, slug="secret-tool-b")
    dataset_b = DatasetFactory(organization=tenant_b.organization, slug="secret-data-b")
    make_agent("VisibleA", "test-sleep", intents=["nap-a"])
    assert OrchestratorEvent.objects.filter(organization=tenant_b.organization).exists()

    objects = {
        "agent": [str(agent_b.pk), agent_b.slug, agent_b.name],
        "tool": [str(tool_b.pk), tool_b.slug],
        "dataset": [str(dataset_b.pk), dataset_b.slug],
        "run": [str(run_b.pk), str(pending_b.pk)],
    }
    # Anything of B's that must never appear in A's answers.
    b_markers = {
        str(tenant_b.organization.pk),
        tenant_b.organization.slug,
        tenant_b.raw_key.split("_")[1],  # the key's public prefix
        *(value for values in objects.values() for value in values),
    }
    before = {
        "agents": list(Agent.objects.filter(organization=tenant_b.organization).values()),
        "tools": list(Tool.objects.filter(organization=tenant_b.organization).values()),
        "datasets": list(Dataset.objects.filter(organization=tenant_b.organization).values()),
        "runs": list(AgentRun.objects.filter(organization=tenant_b.organization).values()),
    }

    with s2.part("matrix") as figures:
        operations = _schema_operations()
        probes = successes = foreign_rows = list_reads = 0
        leaks: list[str] = []
        unmapped: list[str] = []
        fleet_paths = set()
        for path, method in operations:
            if "{" not in path:
                if method == "GET" and not path.endswith("/stream"):
                    response = tenant_a.client.get(path)
                    list_reads += 1
                    text = response.content.decode()
                    found = sorted(marker for marker in b_markers if marker in text)
                    if found:
                        foreign_rows += 1
                        leaks.append(f"GET {path}: {found}")
                continue
            kind = next((k for pattern, k in ORG_SCOPED.items() if re.match(pattern, path)), None)
            if kind is None:
                if any(re.match(pattern, path) for pattern in FLEET_SCOPED):
                    fleet_paths.add(path)
                else:
                    unmapped.append(path)
                continue
            for value in objects[kind]:
                url = re.sub(r"\{[^}]+\}", value, path, count=1)
                response = _call(tenant_a.client, method, url, _body_for(path, method))
                probes += 1
                if response.status_code in SUCCESS or response.status_code == 409:
                    successes += 1
                    leaks.append(f"{method} {url}: {response.status_code}")
                elif response.status_code != 404 and response.status_code not in (401, 403):
                    leaks.append(f"{method} {url}: unexpected {response.status_code}")

        # List filters naming B's things: nothing of B's, whatever the answer.
        filters = [
            f"/api/runs/?agent={agent_b.slug}",
            f"/api/runs/?agent={agent_b.name}",
            "/api/runs/?intent=nap-b",
            f"/api/orchestration/events?organization={tenant_b.organization.slug}",
            f"/api/orchestration/events?agent={agent_b.slug}",
            "/api/orchestration/events?type=run.succeeded",
            "/api/orchestration/circuits",
            "/api/orchestration/metrics",
        ]
        for url in filters:
            response = tenant_a.client.get(url)
            list_reads += 1
            text = response.content.decode()
            found = sorted(marker for marker in b_markers if marker in text)
            if response.status_code in SUCCESS and found:
                foreign_rows += 1
                leaks.append(f"GET {url}: {found}")

        # A's orchestrate may not run B's agent, nor read B's dataset.
        as_b_agent = tenant_a.client.post(
            "/api/orchestrate", {"agent": agent_b.slug, "intent": "nap-b"}, format="json"
        )
        with_b_dataset = tenant_a.client.post(
            "/api/orchestrate",
            {"intent": "nap-a", "datasetId": str(dataset_b.pk)},
            format="json",
        )
        probes += 2
        for response in (as_b_agent, with_b_dataset):
            if response.status_code in SUCCESS:
                successes += 1
                leaks.append(f"orchestrate with B's objects: {response.json()}")

        # A session member of A naming organization B.
        session = Client()
        session.force_login(tenant_a.member.user)
        session_as_b = session.get("/api/runs/", HTTP_X_ORGANIZATION=tenant_b.organization.slug)
        probes += 1
        if session_as_b.status_code in SUCCESS:
            successes += 1
            leaks.append(f"session of A as B: {session_as_b.status_code}")

        after = {
            "agents": list(Agent.objects.filter(organization=tenant_b.organization).values()),
            "tools": list(Tool.objects.filter(organization=tenant_b.organization).values()),
            "datasets": list(Dataset.objects.filter(organization=tenant_b.organization).values()),
            "runs": list(AgentRun.objects.filter(organization=tenant_b.organization).values()),
        }
        b_changed = [
            name
            for name in before
            if json.dumps(before[name], default=str) != json.dumps(after[name], default=str)
        ]

        figures.update(
            {
                "operations_in_schema": len(operations),
                "cross_tenant_probes": probes,
                "successful_cross_tenant_responses": successes,
                "list_and_filter_reads": list_reads,
                "responses_with_foreign_rows": foreign_rows,
                "b_tables_changed": b_changed,
                "fleet_scoped_paths": sorted(fleet_paths),
                "unmapped_paths": unmapped,
            }
        )
        # The reads are not vacuous: A sees its own agent where B's is absent.
        own = tenant_a.client.get("/api/agents/").json()["results"]
        figures["own_rows_visible"] = len(own)
        assert "VisibleA" in {agent["name"] for agent in own}
        assert not unmapped, f"map these path parameters in ORG_SCOPED or FLEET_SCOPED: {unmapped}"
        assert probes >= 40
        assert successes == 0, leaks
        assert foreign_rows == 0, leaks
        assert not leaks, leaks
        assert not b_changed
        assert session_as_b.status_code == 403


FORGED_TIME = "2001-01-01T00:00:00Z"


def test_s2_mass_assignment_is_ignored(s2, tenant_a, tenant_b, make_agent):
    """Writes naming an organization, id, status, owner or timestamps do not get them."""
    make_agent("Napper", "test-sleep", intents=["nap-a"])
    other = str(tenant_b.organization.pk)
    forged_id = str(uuid.uuid4())
    forged = {
        "organization": other,
        "organization_id": other,
        "id": forged_id,
        "created_at": FORGED_TIME,
        "updated_at": FORGED_TIME,
        "user": 1,
    }
    with s2.part("mass_assignment") as figures:
        writes = {}
        agent = tenant_a.client.post("/api/agents/", {"name": "Forger", **forged}, format="json")
        writes["POST agents"] = agent.status_code
        patched = tenant_a.client.patch(f"/api/agents/{agent.json()['id']}/", forged, format="json")
        writes["PATCH agent"] = patched.status_code
        tool = tenant_a.client.post(
            "/api/tools/",
            {"name": "Forged tool", "slug": "forged-tool", "agent": "napper", **forged},
            format="json",
        )
        writes["POST tools"] = tool.status_code
        dataset = tenant_a.client.post(
            "/api/datasets/", {"name": "Forged", "slug": "forged-data", **forged}, format="json"
        )
        writes["POST datasets"] = dataset.status_code
        run = tenant_a.client.post(
            "/api/orchestrate",
            {
                "intent": "nap-a",
                "payload": {"sleep_ms": 1},
                "context": {"organizationId": other, "userId": 1, "organization": other},
                **forged,
                "status": "CANCELLED",
                "runId": forged_id,
            },
            format="json",
        )
        writes["POST orchestrate"] = run.status_code
        run_row = AgentRun.objects.get(pk=run.json()["runId"])
        status_write = tenant_a.client.patch(
            f"/api/runs/{run_row.pk}/", {"status": "CANCELLED", **forged}, format="json"
        )
        writes["PATCH run"] = status_write.status_code
        figures["answers"] = writes

        created = [
            Agent.objects.get(pk=agent.json()["id"]),
            Tool.objects.get(pk=tool.json()["id"]),
            Dataset.objects.get(pk=dataset.json()["id"]),
            run_row,
        ]
        taken = {
            "organization": sum(o.organization_id != tenant_a.organization.pk for o in created),
            "id": sum(str(o.pk) == forged_id for o in created),
            "timestamps": sum(
                o.created_at.year == 2001 or o.updated_at.year == 2001 for o in created
            ),
            "run_status": int(run_row.status != RunStatus.SUCCESS),
            "run_user": int(run_row.user_id is not None),
            "tool_agent": int(created[1].agent_id is not None),
        }
        figures["forged_values_taken"] = taken
        assert agent.status_code == 201 and tool.status_code == 201
        assert dataset.status_code == 201 and patched.status_code == 200
        assert run.status_code == 200 and run.json()["runId"] != forged_id
        assert status_write.status_code == 405  # runs change only through their commands
        assert not any(taken.values()), taken
