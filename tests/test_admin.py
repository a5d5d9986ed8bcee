"""The operators' console: every model renders, and the few writes go through services."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.db import connection, models
from django.urls import reverse
from django.utils import timezone

from agents import services
from agents.choices import AgentStatus, Scope
from agents.models import (
    Agent,
    AgentCapability,
    AgentConfig,
    ApiKey,
    Dataset,
    Organization,
    OrganizationMember,
    Tool,
)
from orchestration.choices import EventType
from orchestration.models import OrchestratorConfigRevision, OrchestratorEvent, OrchestratorNode
from runs.admin import LargeTablePaginator
from runs.choices import RunStatus, StepStatus, ToolExecutionStatus
from runs.models import AgentJob, AgentRun, AgentRunMetric, RunStep, ToolExecution

pytestmark = pytest.mark.django_db

RAW_KEY_PATTERN = re.compile(r"acp_[0-9a-f]+_[A-Za-z0-9_-]+")

# Records are written by the orchestrator; a person may only look at them.
NOT_ADDABLE = {
    AgentRun,
    AgentRunMetric,
    ToolExecution,
    RunStep,
    AgentJob,
    OrchestratorNode,
    OrchestratorEvent,
    OrchestratorConfigRevision,
}

ALL_MODELS = [
    Organization,
    OrganizationMember,
    ApiKey,
    Agent,
    AgentCapability,
    AgentConfig,
    Tool,
    Dataset,
    AgentRun,
    AgentRunMetric,
    ToolExecution,
    RunStep,
    AgentJob,
    OrchestratorNode,
    OrchestratorEvent,
    OrchestratorConfigRevision,
]


def admin_url(model: type[models.Model], view: str, *args) -> str:
    opts = model._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_{view}", args=args)


@pytest.fixture
def records(django_user_model) -> dict[type[models.Model], models.Model]:
    """One row of every registered model, linked the way the orchestrator links them."""
    user = django_user_model.objects.create_user(username="operator", password="unused-pw")
    organization = Organization.objects.create(slug="acme", name="Acme")
    member = OrganizationMember.objects.create(organization=organization, user=user)
    api_key = services.api_key_create(organization=organization, name="ci").api_key
    agent = services.agent_create(
        organization=organization,
        name="Support copilot",
        status=AgentStatus.ACTIVE,
        handler="echo",
        intents=["support.answer"],
    )
    capability = agent.capabilities.get()
    config = AgentConfig.objects.create(agent=agent, key="timeout_ms", value={"value": 5000})
    tool = Tool.objects.create(organization=organization, agent=agent, name="Search", slug="search")
    dataset = Dataset.objects.create(organization=organization, name="FAQ", slug="faq")
    now = timezone.now()
    run = AgentRun.objects.create(
        organization=organization,
        agent=agent,
        dataset=dataset,
        user=user,
        intent="support.answer",
        status=RunStatus.SUCCESS,
        input={"question": "hello"},
        output={"answer": "hi"},
        meta={"mode": "sync"},
        idempotency_key="order-42",
        started_at=now - timedelta(milliseconds=120),
        completed_at=now,
        duration_ms=120,
    )
    metric = AgentRunMetric.objects.create(run=run, name="latency_ms", value=120.0)
    execution = ToolExecution.objects.create(
        tool=tool, run=run, call_id="call-1", status=ToolExecutionStatus.SUCCESS
    )
    step = RunStep.objects.create(run=run, name="retrieve", status=StepStatus.SUCCESS)
    job = AgentJob.objects.create(
        organization=organization, agent_name="support", status="completed", input={"q": 1}
    )
    node = OrchestratorNode.objects.create(node_id="node-a", region="eu", capacity=4)
    event = OrchestratorEvent.objects.create(
        type=EventType.RUN_SUCCEEDED, organization=organization, agent=agent, run=run
    )
    revision = OrchestratorConfigRevision.objects.create(
        created_by=user, document={"rate_limit": {"per_minute": 60}}, comment="initial"
    )
    return {
        Organization: organization,
        OrganizationMember: member,
        ApiKey: api_key,
        Agent: agent,
        AgentCapability: capability,
        AgentConfig: config,
        Tool: tool,
        Dataset: dataset,
        AgentRun: run,
        AgentRunMetric: metric,
        ToolExecution: execution,
        RunStep: step,
        AgentJob: job,
        OrchestratorNode: node,
        OrchestratorEvent: event,
        OrchestratorConfigRevision: revision,
    }


def test_every_model_is_registered():
    registered = set(admin.site._registry)
    assert set(ALL_MODELS) <= registered


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
def test_changelist_lists_the_row(admin_client, records, model):
    response = admin_client.get(admin_url(model, "changelist"))

    assert response.status_code == 200
    assert records[model].pk in {obj.pk for obj in response.context["cl"].result_list}


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
def test_change_page_renders(admin_client, records, model):
    response = admin_client.get(admin_url(model, "change", records[model].pk))

    assert response.status_code == 200


@pytest.mark.parametrize(
    "model", [m for m in ALL_MODELS if m not in NOT_ADDABLE], ids=lambda m: m.__name__
)
def test_add_page_renders(admin_client, model):
    assert admin_client.get(admin_url(model, "add")).status_code == 200


@pytest.mark.parametrize("model", sorted(NOT_ADDABLE, key=str), ids=lambda m: m.__name__)
def test_records_cannot_be_added(admin_client, model):
    assert admin_client.get(admin_url(model, "add")).status_code == 403


def test_run_changelist_leaves_payload_columns_out(admin_client, records):
    response = admin_client.get(admin_url(AgentRun, "changelist"))

    (run,) = response.context["cl"].result_list
    assert {"input", "output", "meta"} <= run.get_deferred_fields()


@pytest.mark.parametrize("term", ["{run_id}", "order-42"])
def test_run_search_finds_by_id_or_idempotency_key(admin_client, records, term):
    run = records[AgentRun]
    response = admin_client.get(
        admin_url(AgentRun, "changelist"), {"q": term.format(run_id=run.pk)}
    )

    assert [obj.pk for obj in response.context["cl"].result_list] == [run.pk]


def test_run_search_with_unknown_uuid_finds_nothing(admin_client, records):
    response = admin_client.get(
        admin_url(AgentRun, "changelist"), {"q": "00000000-0000-7000-8000-000000000000"}
    )

    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == []


def test_api_key_add_form_stores_only_the_hash(admin_client, records):
    organization = records[Organization]
    response = admin_client.post(
        admin_url(ApiKey, "add"),
        {
            "organization": organization.pk,
            "name": "deploy bot",
            "scopes": [Scope.RUNS_READ, Scope.RUNS_WRITE],
            "expires_at_0": "",
            "expires_at_1": "",
        },
        follow=True,
    )

    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"]]
    once = [m for m in shown if m.startswith("Copy it now, it is not shown again: ")]
    assert len(once) == 1
    raw_key = RAW_KEY_PATTERN.search(once[0]).group(0)

    api_key = ApiKey.objects.get(name="deploy bot")
    assert api_key.matches(raw_key)
    assert api_key.scopes == sorted([Scope.RUNS_READ, Scope.RUNS_WRITE])
    assert api_key.created_by == get_user_model().objects.get(username="admin")
    assert raw_key.startswith(f"acp_{api_key.prefix}_")
    # The secret itself may contain "_" (urlsafe base64): it is all after the prefix.
    secret = raw_key.removeprefix(f"acp_{api_key.prefix}_")
    assert len(secret) >= 40
    stored = [
        *ApiKey.objects.filter(pk=api_key.pk).values_list(),
        *LogEntry.objects.values_list(),
        *Session.objects.values_list("session_data"),
    ]
    for row in stored:
        for column in row:
            assert raw_key not in str(column)
            assert secret not in str(column)


def test_api_key_changelist_never_shows_the_hash(admin_client, records):
    response = admin_client.get(admin_url(ApiKey, "changelist"))

    assert "key_hash" not in response.context["cl"].list_display
    assert records[ApiKey].key_hash not in response.content.decode()


def test_revoke_action_sets_revoked_at(admin_client, records):
    api_key = records[ApiKey]

    response = admin_client.post(
        admin_url(ApiKey, "changelist"),
        {"action": "revoke_keys", "_selected_action": [api_key.pk]},
    )

    assert response.status_code == 302
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    assert not api_key.is_usable()


@pytest.mark.parametrize(
    ("action", "status"),
    [("pause", AgentStatus.PAUSED), ("disable", AgentStatus.DISABLED)],
)
def test_agent_status_actions(admin_client, records, action, status):
    agent = records[Agent]

    admin_client.post(
        admin_url(Agent, "changelist"), {"action": action, "_selected_action": [agent.pk]}
    )

    agent.refresh_from_db()
    assert agent.status == status


def _empty_inline(prefix: str) -> dict[str, str]:
    return {
        f"{prefix}-TOTAL_FORMS": "0",
        f"{prefix}-INITIAL_FORMS": "0",
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
    }


def _agent_form(organization: Organization, *, tool_slug: str) -> dict[str, str]:
    return {
        "organization": str(organization.pk),
        "name": "Analyst",
        "slug": "analyst",
        "kind": "ANALYST",
        "status": "DRAFT",
        "version": "1.0.0",
        "config": "{}",
        **_empty_inline("capabilities"),
        **_empty_inline("config_entries"),
        **_empty_inline("tools"),
        "tools-TOTAL_FORMS": "1",
        "tools-0-name": "Lookup",
        "tools-0-slug": tool_slug,
        "tools-0-description": "",
    }


def test_tool_added_under_an_agent_joins_its_organization(admin_client, records):
    organization = records[Organization]

    response = admin_client.post(
        admin_url(Agent, "add"), _agent_form(organization, tool_slug="lookup")
    )

    assert response.status_code == 302
    tool = Tool.objects.get(slug="lookup")
    assert tool.organization == organization
    assert tool.agent == Agent.objects.get(slug="analyst")


def test_tool_slug_taken_in_the_organization_is_a_form_error(admin_client, records):
    organization = records[Organization]

    response = admin_client.post(
        admin_url(Agent, "add"), _agent_form(organization, tool_slug="search")
    )

    assert response.status_code == 200
    assert "already has a tool with this slug" in response.content.decode()
    assert not Agent.objects.filter(slug="analyst").exists()


def test_agent_job_is_view_only(admin_client, records):
    job = records[AgentJob]
    url = admin_url(AgentJob, "change", job.pk)

    page = admin_client.get(url)
    refused = admin_client.post(url, {"agent_name": "changed", "status": "failed"})

    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    assert refused.status_code == 403
    job.refresh_from_db()
    assert job.agent_name == "support"


def test_run_detail_is_view_only(admin_client, records):
    run = records[AgentRun]
    url = admin_url(AgentRun, "change", run.pk)

    page = admin_client.get(url)

    assert 'name="_save"' not in page.content.decode()
    assert admin_client.post(url, {"status": "FAILED"}).status_code == 403
    assert admin_client.get(admin_url(AgentRun, "delete", run.pk)).status_code == 403


def test_unfiltered_big_lists_use_the_row_estimate(admin_client, records, monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("the estimate comes from PostgreSQL's statistics")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE agent_runs")
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = 'agent_runs'")
        (estimate,) = cursor.fetchone()
    monkeypatch.setattr(LargeTablePaginator, "EXACT_COUNT_BELOW", 0)

    unfiltered = admin_client.get(admin_url(AgentRun, "changelist"))
    filtered = admin_client.get(admin_url(AgentRun, "changelist"), {"status__exact": "SUCCESS"})

    assert unfiltered.context["cl"].result_count == estimate
    assert filtered.context["cl"].result_count == 1
