"""The operators' console: dashboard, run browser, agent editor, scoping, and cost at scale."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from agents.choices import AgentStatus, MemberRole
from agents.models import Agent, Organization
from orchestration.choices import EventType, NodeStatus
from orchestration.models import OrchestratorEvent, OrchestratorNode
from orchestration.policies import CircuitState, LocalPolicyStore, policy_store_reset
from orchestration.services.circuits import circuit_list
from runs.admin import LargeTablePaginator
from runs.choices import RunStatus, StepStatus, ToolExecutionStatus
from runs.models import AgentRun, AgentRunMetric, RunStep, ToolExecution
from tests.factories import (
    AgentFactory,
    CapabilityFactory,
    MemberFactory,
    OrganizationFactory,
    ToolFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

RUNS = reverse("admin:runs_agentrun_changelist")
AGENTS = reverse("admin:agents_agent_changelist")
EVENTS = reverse("admin:orchestration_orchestratorevent_changelist")
INDEX = reverse("admin:index")
DATA = reverse("admin:orchestration_console_data")

STATUSES = [RunStatus.SUCCESS, RunStatus.SUCCESS, RunStatus.FAILED, RunStatus.PENDING]


def run_url(run, view="change") -> str:
    return reverse(f"admin:runs_agentrun_{view}", args=[run.pk])


def agent_url(agent, view="change") -> str:
    return reverse(f"admin:agents_agent_{view}", args=[agent.pk])


@pytest.fixture(autouse=True)
def local_policy_store():
    """Circuits are read from a process-local store: no state leaks between tests."""
    policy_store_reset(LocalPolicyStore())
    yield
    policy_store_reset(None)


@pytest.fixture
def org_a() -> Organization:
    return OrganizationFactory(slug="org-a")


@pytest.fixture
def org_b() -> Organization:
    return OrganizationFactory(slug="org-b")


@pytest.fixture
def agent_a(org_a) -> Agent:
    agent = AgentFactory(organization=org_a, name="Writer", slug="writer", handler="content")
    CapabilityFactory(agent=agent, name="summarize")
    return agent


@pytest.fixture
def agent_b(org_b) -> Agent:
    return AgentFactory(organization=org_b, name="Secret", slug="secret", handler="content")


def make_runs(agent: Agent, count: int, *, start: int = 0) -> list[AgentRun]:
    """`count` runs of the agent over the last hour, statuses mixed, finished ones timed."""
    now = timezone.now()
    runs = []
    for i in range(start, start + count):
        status = STATUSES[i % len(STATUSES)]
        created = now - timedelta(seconds=5 + i * 7)
        finished = status in (RunStatus.SUCCESS, RunStatus.FAILED)
        runs.append(
            AgentRun(
                organization_id=agent.organization_id,
                agent=agent,
                intent="summarize",
                status=status,
                input={"text": "x" * 200},
                output={"summary": "x"} if status == RunStatus.SUCCESS else None,
                meta={"mode": "async", "policies": [{"policy": "retry", "retried": 1}]},
                error_code="AGENT_TIMEOUT" if status == RunStatus.FAILED else "",
                error_message="took too long" if status == RunStatus.FAILED else "",
                node_id="node-a",
                queued_at=created,
                started_at=created if finished else None,
                completed_at=created + timedelta(milliseconds=100 + i) if finished else None,
                duration_ms=100 + i if finished else None,
            )
        )
    created = AgentRun.objects.bulk_create(runs)
    # created_at is auto_now_add: spread it like real traffic for the time windows.
    for run in created:
        AgentRun.objects.filter(pk=run.pk).update(created_at=run.queued_at)
    return created


def staff_client(organization: Organization, role: str, username: str) -> Client:
    """A staff user with every model permission of the project, narrowed by one role."""
    user = UserFactory(username=username, is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label__in=["agents", "runs", "orchestration"])
    )
    MemberFactory(organization=organization, user=user, role=role)
    client = Client()
    client.force_login(user)
    client.session_user = user
    return client


def count_queries(client: Client, url: str, data=None) -> tuple[int, list[str]]:
    """Queries of one page view, once per-process caches (configuration, session) are warm."""
    client.get(url, data or {})
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url, data or {})
    assert response.status_code == 200, response.status_code
    return len(captured), [query["sql"] for query in captured]


# --- the dashboard -----------------------------------------------------------------------


def test_dashboard_on_the_admin_index(admin_client, agent_a):
    runs = make_runs(agent_a, 12)
    failed = next(run for run in runs if run.status == RunStatus.FAILED)
    OrchestratorNode.objects.create(node_id="node-eu-1", region="eu-west", capacity=8)

    response = admin_client.get(INDEX)

    page = response.content.decode()
    assert response.status_code == 200
    assert 'id="console-dashboard"' in page
    assert page.count('<svg class="console-chart"') == 2
    assert run_url(failed) in page  # the latest failures link to their runs
    assert "node-eu-1" in page and "eu-west" in page
    assert "orchestration/console.js" in page
    assert "https://" not in re.sub(r'href="https://[^"]*"', "", page.split("<body")[1])


def test_dashboard_data_endpoint_returns_the_figures_and_the_body(admin_client, agent_a):
    make_runs(agent_a, 8)

    response = admin_client.get(DATA)

    assert response.status_code == 200
    body = response.json()
    assert body["figures"]["hour"]["runs"] == 8
    assert body["figures"]["pendingBacklog"] == 2
    assert body["figures"]["hour"]["successRate"] == pytest.approx(4 / 6, abs=1e-3)
    assert '<svg class="console-chart"' in body["html"]


def test_dashboard_data_needs_a_staff_login(client):
    response = client.get(DATA)

    assert response.status_code == 302
    assert "/login/" in response["Location"]


def test_dashboard_shows_open_circuits(admin_client, agent_a):
    from orchestration.services.circuits import circuit_force

    circuit_force(agent=agent_a, state="OPEN", actor="test")

    body = admin_client.get(DATA).json()

    assert body["figures"]["notableCircuits"] == [str(agent_a.pk)]
    assert agent_url(agent_a) in body["html"]


def test_dashboard_queries_do_not_grow_with_runs(admin_client, agent_a):
    make_runs(agent_a, 20)
    few, _ = count_queries(admin_client, INDEX)
    make_runs(agent_a, 180, start=20)
    many, _ = count_queries(admin_client, INDEX)

    assert many == few


def test_scoped_dashboard_counts_only_the_users_organizations(org_a, agent_a, agent_b):
    make_runs(agent_a, 4)
    make_runs(agent_b, 6)
    client = staff_client(org_a, MemberRole.VIEWER, "viewer-a")

    body = client.get(DATA).json()

    assert body["figures"]["hour"]["runs"] == 4
    assert "Secret" not in body["html"]


def test_scoped_dashboard_queries_do_not_grow_with_the_users_organizations(org_a, agent_a):
    client = staff_client(org_a, MemberRole.VIEWER, "viewer-many")
    make_runs(agent_a, 4)
    one, _ = count_queries(client, INDEX)
    for i in range(3):
        organization = OrganizationFactory(slug=f"more-{i}")
        MemberFactory(organization=organization, user=client.session_user, role=MemberRole.VIEWER)
        make_runs(AgentFactory(organization=organization, name=f"More{i}", slug=f"more-{i}"), 2)
    make_runs(AgentFactory(organization=OrganizationFactory(slug="not-mine"), name="Other"), 5)

    four, sql = count_queries(client, INDEX)
    body = client.get(DATA).json()

    assert four == one, "\n".join(sql)
    assert body["figures"]["hour"]["runs"] == 4 + 3 * 2
    agents = re.findall(r"More\d|Writer|Other", body["html"])
    assert sorted(set(agents)) == ["More0", "More1", "More2", "Writer"]


# --- the run browser ---------------------------------------------------------------------


@pytest.mark.parametrize("who", ["superuser", "scoped"])
def test_runs_changelist_queries_do_not_grow_with_rows(admin_client, org_a, agent_a, who):
    client = admin_client if who == "superuser" else staff_client(org_a, MemberRole.ADMIN, "ad")
    make_runs(agent_a, 20)
    few, _ = count_queries(client, RUNS)
    make_runs(agent_a, 180, start=20)
    many, sql = count_queries(client, RUNS)

    assert many == few
    assert many <= 12, "\n".join(sql)


def test_runs_changelist_filters_and_search_stay_bounded(admin_client, agent_a):
    make_runs(agent_a, 40)
    year = timezone.now().year
    for params in (
        {"status__exact": "FAILED"},
        {"error_code": "AGENT_TIMEOUT"},
        {"agent__id__exact": str(agent_a.pk)},
        {"created_at__year": str(year)},
        {"q": "too long"},
    ):
        _, sql = count_queries(admin_client, RUNS, params)
        run_queries = [s for s in sql if "agent_runs" in s]
        assert not [s for s in run_queries if "DISTINCT" in s.upper()], params
        for query in run_queries:
            if "COUNT(" in query.upper():
                assert "LIMIT" in query.upper(), query


def test_runs_changelist_shows_badges_and_defers_big_columns(admin_client, agent_a):
    make_runs(agent_a, 4)

    response = admin_client.get(RUNS)

    page = response.content.decode()
    assert 'class="run-status"' in page
    assert "node-a" in page
    for run in response.context["cl"].result_list:
        assert {"input", "output", "meta", "metrics"} <= run.get_deferred_fields()


def test_error_code_filter_offers_a_fixed_list(admin_client, agent_a):
    make_runs(agent_a, 4)

    response = admin_client.get(RUNS)

    (error_filter,) = [f for f in response.context["cl"].filter_specs if f.title == "error code"]
    codes = {value for value, _ in error_filter.lookup_choices}
    assert {"AGENT_TIMEOUT", "CIRCUIT_OPEN", "NODE_LOST", "CANCELLED"} <= codes


def test_run_change_page_queries_do_not_grow_with_children(admin_client, agent_a):
    tool = ToolFactory(organization=agent_a.organization, slug="search")
    quiet, busy = make_runs(agent_a, 2)

    def add_children(run, count):
        for i in range(count):
            RunStep.objects.create(run=run, name=f"step {i}", position=i, status=StepStatus.SUCCESS)
            AgentRunMetric.objects.create(run=run, name=f"m{i}", value=i)
            ToolExecution.objects.create(
                run=run, tool=tool, call_id=f"c{i}", status=ToolExecutionStatus.SUCCESS
            )

    add_children(quiet, 2)
    add_children(busy, 30)
    few, _ = count_queries(admin_client, run_url(quiet))
    many, sql = count_queries(admin_client, run_url(busy))

    assert many == few
    assert many <= 14, "\n".join(sql)


def test_run_change_page_shows_timeline_policies_and_pretty_json(admin_client, agent_a):
    run = make_runs(agent_a, 1)[0]
    RunStep.objects.create(run=run, name="retrieve", position=0, status=StepStatus.SUCCESS)

    page = admin_client.get(run_url(run)).content.decode()

    assert 'class="run-timeline"' in page
    assert "step 0: retrieve" in page
    assert "<strong>retry</strong>: retried=1" in page
    assert "<pre>{\n  &quot;text&quot;" in page


def test_cancel_action_cancels_a_pending_run(admin_client, agent_a):
    pending = AgentRun.objects.create(
        organization=agent_a.organization, agent=agent_a, intent="summarize"
    )

    response = admin_client.post(
        RUNS, {"action": "cancel_runs", "_selected_action": [pending.pk]}, follow=True
    )

    pending.refresh_from_db()
    assert pending.status == RunStatus.CANCELLED
    assert "Cancelled 1 pending run(s)." in [str(m) for m in response.context["messages"]]


def test_retry_action_orchestrates_a_new_linked_run(admin_client, agent_a, settings):
    agent_a.status = AgentStatus.ACTIVE
    agent_a.save()
    failed = AgentRun.objects.create(
        organization=agent_a.organization,
        agent=agent_a,
        intent="summarize",
        status=RunStatus.FAILED,
        input={"text": "One. Two."},
        error_code="AGENT_TIMEOUT",
    )

    response = admin_client.post(
        RUNS, {"action": "retry_runs", "_selected_action": [failed.pk]}, follow=True
    )

    retry = AgentRun.objects.get(retry_of=failed)
    assert retry.status == RunStatus.PENDING
    assert retry.input == failed.input
    assert retry.meta["principal"] == f"admin:{response.context['user'].pk}"
    messages = [str(m) for m in response.context["messages"]]
    assert any(run_url(retry) in m for m in messages), messages


def test_retry_refuses_an_active_run(admin_client, agent_a):
    pending = AgentRun.objects.create(
        organization=agent_a.organization, agent=agent_a, intent="summarize"
    )

    admin_client.post(RUNS, {"action": "retry_runs", "_selected_action": [pending.pk]})

    assert not AgentRun.objects.filter(retry_of=pending).exists()


# --- the agent editor --------------------------------------------------------------------


def agent_form(agent: Agent, **overrides) -> dict:
    data = {
        "organization": str(agent.organization_id),
        "name": agent.name,
        "slug": agent.slug,
        "kind": agent.kind,
        "status": agent.status,
        "version": agent.version,
        "owner_team": "",
        "description": "",
        "handler": agent.handler,
        "config": "{}",
    }
    for prefix, rows in (("capabilities", []), ("config_entries", []), ("tools", [])):
        data.update(
            {
                f"{prefix}-TOTAL_FORMS": str(len(rows)),
                f"{prefix}-INITIAL_FORMS": "0",
                f"{prefix}-MIN_NUM_FORMS": "0",
                f"{prefix}-MAX_NUM_FORMS": "1000",
            }
        )
    data.update(overrides)
    return data


def test_agent_page_shows_handler_state_circuit_and_recent_runs(admin_client, agent_a):
    runs = make_runs(agent_a, 12)

    response = admin_client.get(agent_url(agent_a))

    page = response.content.decode()
    assert "content is registered in this process." in page
    assert "CLOSED" in page
    newest = sorted(runs, key=lambda r: r.queued_at)[-10:]
    assert all(run_url(run) in page for run in newest)
    oldest = min(runs, key=lambda r: r.queued_at)
    assert run_url(oldest) not in page
    handler_choices = [
        value for value, _ in response.context["adminform"].form["handler"].field.choices
    ]
    assert handler_choices[0] == "" and "content" in handler_choices and "http" in handler_choices


def test_agent_with_an_unregistered_handler_keeps_it_as_a_marked_choice(admin_client, org_a):
    agent = AgentFactory(organization=org_a, handler="gone-away")

    page = admin_client.get(agent_url(agent)).content.decode()

    assert "gone-away (not registered)" in page
    assert "its runs fail with AGENT_NOT_REGISTERED" in page


def test_unknown_handler_is_refused(admin_client, agent_a):
    response = admin_client.post(agent_url(agent_a), agent_form(agent_a, handler="nope"))

    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ('{"retry": {"max_attempts": 50}}', "retry.max_attempts: Ensure this value is less"),
        ('{"retry": {"tries": 3}}', "retry.tries: Unknown setting."),
        ('{"rate_limit": {"limit": "lots"}}', "rate_limit.limit: A valid integer is required."),
        ('{"circuit": {"minimum_calls": 99}}', "circuit.minimum_calls: Must not exceed"),
        ('{"timeout_s": -1}', "timeout_s: Ensure this value is greater than 0"),
        ('{"url": "ftp://example.com"}', "url: Enter a valid http or https URL."),
        ("[1, 2]", "config: Must be a JSON object."),
    ],
)
def test_agent_config_is_validated_with_field_errors(admin_client, agent_a, config, expected):
    response = admin_client.post(agent_url(agent_a), agent_form(agent_a, config=config))

    assert response.status_code == 200
    assert expected in response.content.decode()
    agent_a.refresh_from_db()
    assert agent_a.config == {}


def test_agent_config_accepts_known_and_handler_settings(admin_client, agent_a):
    config = '{"retry": {"max_attempts": 2}, "timeout_s": 5, "tone": "bold"}'

    response = admin_client.post(agent_url(agent_a), agent_form(agent_a, config=config))

    assert response.status_code == 302
    agent_a.refresh_from_db()
    assert agent_a.config == {"retry": {"max_attempts": 2}, "timeout_s": 5, "tone": "bold"}


def test_active_http_agent_needs_a_url_in_its_config_or_rows(admin_client, agent_a):
    without = agent_form(agent_a, handler="http", status=AgentStatus.ACTIVE)
    with_row = {
        **without,
        "config_entries-TOTAL_FORMS": "1",
        "config_entries-0-key": "url",
        "config_entries-0-value": '"https://agent.example.com/run"',
    }

    refused = admin_client.post(agent_url(agent_a), without)
    accepted = admin_client.post(agent_url(agent_a), with_row)

    assert "The http handler needs the agent" in refused.content.decode()
    assert accepted.status_code == 302
    agent_a.refresh_from_db()
    assert agent_a.handler == "http"


def test_config_row_is_validated_like_the_config(admin_client, agent_a):
    data = {
        **agent_form(agent_a),
        "config_entries-TOTAL_FORMS": "1",
        "config_entries-0-key": "retry",
        "config_entries-0-value": '{"max_attempts": 0}',
    }

    response = admin_client.post(agent_url(agent_a), data)

    assert "retry.max_attempts: Ensure this value is greater than or equal to 1." in (
        response.content.decode()
    )


# --- events ------------------------------------------------------------------------------


def test_events_browser_filters_by_a_fixed_type_list_and_links(admin_client, agent_a):
    run = make_runs(agent_a, 1)[0]
    OrchestratorEvent.objects.create(
        type=EventType.RUN_FAILED, organization=agent_a.organization, agent=agent_a, run=run
    )
    OrchestratorEvent.objects.create(type=EventType.NODE_REGISTERED, node_id="node-a")

    _, sql = count_queries(admin_client, EVENTS, {"type__exact": EventType.RUN_FAILED})
    response = admin_client.get(EVENTS, {"type__exact": EventType.RUN_FAILED})

    page = response.content.decode()
    assert [event.type for event in response.context["cl"].result_list] == [EventType.RUN_FAILED]
    assert run_url(run) in page and agent_url(agent_a) in page
    assert not [s for s in sql if "DISTINCT" in s.upper()]


# --- scoping -----------------------------------------------------------------------------


def test_scoped_staff_sees_only_their_organizations_runs(org_a, agent_a, agent_b):
    mine = make_runs(agent_a, 3)
    theirs = make_runs(agent_b, 3)
    client = staff_client(org_a, MemberRole.VIEWER, "viewer")

    listed = client.get(RUNS)
    own_page = client.get(run_url(mine[0]))
    other_page = client.get(run_url(theirs[0]))

    assert {run.pk for run in listed.context["cl"].result_list} == {run.pk for run in mine}
    assert own_page.status_code == 200
    assert other_page.status_code == 302  # "does not exist", like a wrong id
    assert not AgentRun.objects.filter(pk=theirs[0].pk, status=RunStatus.CANCELLED).exists()
    filter_labels = [
        str(label)
        for spec in listed.context["cl"].filter_specs
        for _, label in getattr(spec, "lookup_choices", [])
    ]
    assert "org-b" not in filter_labels
    assert not [label for label in filter_labels if "Secret" in label]


def test_scoped_filters_offer_only_the_users_organizations(org_a, agent_a, agent_b):
    org_c = OrganizationFactory(slug="org-c")
    agent_c = AgentFactory(organization=org_c, name="Helper", slug="helper")
    make_runs(agent_a, 1)
    make_runs(agent_c, 1)
    client = staff_client(org_a, MemberRole.VIEWER, "two-orgs")
    MemberFactory(organization=org_c, user=client.session_user, role=MemberRole.VIEWER)

    listed = client.get(RUNS)

    specs = {spec.title: spec for spec in listed.context["cl"].filter_specs}
    organizations = {label for _, label in specs["organization"].lookup_choices}
    agents = {label for _, label in specs["agent"].lookup_choices}
    assert organizations == {"org-a", "org-c"}
    assert agents == {"Writer (org-a)", "Helper (org-c)"}


def test_date_hierarchy_is_derived_from_the_first_and_last_run(admin_client, agent_a):
    old, _new = make_runs(agent_a, 2)
    AgentRun.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=800))

    _, sql = count_queries(admin_client, RUNS)
    response = admin_client.get(RUNS)

    year = timezone.now().year
    page = response.content.decode()
    assert all(f"created_at__year={y}" in page for y in range(year - 2, year + 1))
    assert not [s for s in sql if "DISTINCT" in s.upper()]
    month = admin_client.get(RUNS, {"created_at__year": year, "created_at__month": 1})
    assert month.status_code == 200


def test_scoped_staff_cannot_see_or_pick_another_organizations_objects(org_a, org_b, agent_b):
    client = staff_client(org_a, MemberRole.ADMIN, "admin-a")

    agents = client.get(AGENTS)
    other_agent = client.get(agent_url(agent_b))
    add_form = client.get(reverse("admin:agents_agent_add"))
    forged = client.post(
        reverse("admin:agents_agent_add"),
        agent_form(Agent(organization=org_b, name="Forged", slug="forged", handler="")),
    )

    assert agent_b.pk not in {agent.pk for agent in agents.context["cl"].result_list}
    assert other_agent.status_code == 302
    choices = add_form.context["adminform"].form.fields["organization"].queryset
    assert list(choices) == [org_a]
    assert forged.status_code == 200
    assert "Select a valid choice" in forged.content.decode()
    assert not Agent.objects.filter(slug="forged").exists()
    orgs = client.get(reverse("admin:agents_organization_changelist"))
    assert [o.pk for o in orgs.context["cl"].result_list] == [org_a.pk]
    autocomplete = client.get(
        reverse("admin:autocomplete"),
        {"app_label": "agents", "model_name": "agent", "field_name": "organization"},
    )
    assert [row["id"] for row in autocomplete.json()["results"]] == [str(org_a.pk)]


def test_viewer_may_look_but_not_edit_or_operate(org_a, agent_a):
    pending = AgentRun.objects.create(organization=org_a, agent=agent_a, intent="summarize")
    client = staff_client(org_a, MemberRole.VIEWER, "viewer")

    page = client.get(agent_url(agent_a))
    edit = client.post(agent_url(agent_a), agent_form(agent_a, name="Renamed"))
    runs = client.get(RUNS)
    cancel = client.post(RUNS, {"action": "cancel_runs", "_selected_action": [pending.pk]})

    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    assert edit.status_code == 403
    assert "cancel_runs" not in runs.content.decode()
    assert cancel.status_code in (200, 302)
    pending.refresh_from_db()
    assert pending.status == RunStatus.PENDING


def test_operator_may_cancel_own_runs_but_not_edit_agents(org_a, agent_a, agent_b):
    mine = AgentRun.objects.create(organization=org_a, agent=agent_a, intent="summarize")
    theirs = AgentRun.objects.create(
        organization=agent_b.organization, agent=agent_b, intent="summarize"
    )
    client = staff_client(org_a, MemberRole.OPERATOR, "operator")

    client.post(RUNS, {"action": "cancel_runs", "_selected_action": [mine.pk, theirs.pk]})
    edit = client.post(agent_url(agent_a), agent_form(agent_a, name="Renamed"))
    pause = client.post(AGENTS, {"action": "pause", "_selected_action": [agent_a.pk]})
    force = client.post(AGENTS, {"action": "force_open", "_selected_action": [agent_a.pk]})

    mine.refresh_from_db()
    theirs.refresh_from_db()
    agent_a.refresh_from_db()
    assert mine.status == RunStatus.CANCELLED
    assert theirs.status == RunStatus.PENDING
    assert edit.status_code == 403
    assert pause.status_code in (200, 302)
    assert agent_a.status == AgentStatus.ACTIVE
    # Forcing a circuit needs agents:write, as over the API.
    assert force.status_code in (200, 302)
    assert circuit_list(agents=[agent_a])[0].snapshot.state == CircuitState.CLOSED


def test_node_drain_action(admin_client):
    node = OrchestratorNode.objects.create(node_id="node-d", region="eu", capacity=2)

    admin_client.post(
        reverse("admin:orchestration_orchestratornode_changelist"),
        {"action": "drain_nodes", "_selected_action": [node.pk]},
    )

    node.refresh_from_db()
    assert node.status == NodeStatus.DRAINING


# --- a big table -------------------------------------------------------------------------


GENERATE_RUNS = """
INSERT INTO agent_runs (
    id, created_at, updated_at, organization_id, agent_id, status, intent, objective,
    input, metrics, meta, input_hash, error_code, error_message, node_id, attempt,
    queued_at, started_at, completed_at, duration_ms
)
SELECT
    gen_random_uuid(), t, t, %(organization)s, %(agent)s,
    (ARRAY['SUCCESS', 'SUCCESS', 'SUCCESS', 'FAILED', 'CANCELLED'])[1 + g %% 5],
    'summarize', '', '{"text": "generated"}'::jsonb, '{}'::jsonb, '{}'::jsonb, '',
    CASE WHEN g %% 5 = 3 THEN 'AGENT_TIMEOUT' ELSE '' END, '', 'node-a', 1,
    t, t, t + interval '150 milliseconds', 150
FROM generate_series(1, %(rows)s) AS g, LATERAL (SELECT now() - g * interval '3 seconds') AS s(t)
"""


@pytest.mark.slow
def test_runs_changelist_with_200k_runs_never_counts_the_whole_table(admin_client, agent_a):
    if connection.vendor != "postgresql":
        pytest.skip("generate_series and the row estimate are PostgreSQL's")
    with connection.cursor() as cursor:
        cursor.execute(
            GENERATE_RUNS,
            {"organization": agent_a.organization_id, "agent": agent_a.pk, "rows": 200_000},
        )
        cursor.execute("ANALYZE agent_runs")

    _, sql = count_queries(admin_client, RUNS)

    counts = [s for s in sql if "COUNT(" in s.upper() and '"agent_runs"' in s]
    assert not [s for s in counts if " WHERE " not in s.upper()], counts
    assert not [s for s in sql if "DISTINCT" in s.upper() and '"agent_runs"' in s]
    response = admin_client.get(RUNS)
    assert response.status_code == 200
    assert response.context["cl"].result_count >= LargeTablePaginator.EXACT_COUNT_BELOW
    assert len(response.context["cl"].result_list) == 100

    # The page's own list query is served by an index, not a scan of the table.
    (listing,) = [s for s in sql if '"agent_runs"' in s and "LIMIT 100" in s]
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {listing}")
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Seq Scan on agent_runs" not in plan, plan

    for params in ({"status__exact": "FAILED"}, {"error_code": "AGENT_TIMEOUT"}, {"q": "none"}):
        _, sql = count_queries(admin_client, RUNS, params)
        for query in sql:
            if "COUNT(" in query.upper() and '"agent_runs"' in query:
                assert "LIMIT" in query.upper(), query
