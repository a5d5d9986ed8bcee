"""The console in a real browser: log in, read the dashboard, edit an agent, act on runs
and nodes -- each test leaves a screenshot in artifacts/."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from agents.choices import AgentStatus, Scope
from agents.services import api_key_create
from orchestration.choices import NodeStatus
from orchestration.models import OrchestratorNode
from runs.choices import RunStatus
from runs.models import AgentRun
from tests.factories import AgentFactory, OrganizationFactory

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TEXT = "The console shows runs. Operators act on them. Nodes can be drained. Charts are SVG."


@pytest.fixture
def agent():
    organization = OrganizationFactory(slug="acme")
    return AgentFactory(
        organization=organization,
        name="Writer",
        slug="writer",
        handler="content",
        status=AgentStatus.ACTIVE,
    )


def some_runs(agent, count: int = 30) -> None:
    now = timezone.now()
    for i in range(count):
        status = [RunStatus.SUCCESS, RunStatus.SUCCESS, RunStatus.FAILED][i % 3]
        run = AgentRun.objects.create(
            organization=agent.organization,
            agent=agent,
            intent="summarize",
            status=status,
            error_code="AGENT_TIMEOUT" if status == RunStatus.FAILED else "",
            error_message="took too long" if status == RunStatus.FAILED else "",
            started_at=now,
            completed_at=now,
            duration_ms=80 + i * 13,
        )
        AgentRun.objects.filter(pk=run.pk).update(created_at=now - timedelta(minutes=i * 2))


def test_dashboard_shows_runs_nodes_and_failures(page, live_server, agent, screenshot):
    some_runs(agent)
    OrchestratorNode.objects.create(node_id="node-eu-1", region="eu-west", capacity=8)
    OrchestratorNode.objects.create(
        node_id="node-us-1", region="us-east", capacity=4, active_runs=3, cpu_utilization=0.62
    )

    page.goto(f"{live_server.url}/admin/")

    dashboard = page.locator("#console-dashboard")
    dashboard.wait_for()
    assert page.locator("svg.console-chart").count() == 2
    assert page.locator("#console-nodes tbody tr").count() == 2
    assert page.locator("#console-failures tbody tr").count() == 10
    assert "Writer" in page.locator("#console-agents").inner_text()
    # The refresh swaps the body in place from the JSON endpoint, without a reload.
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    page.wait_for_selector("#console-dashboard[data-refreshed]")
    assert page.locator("svg.console-chart").count() == 2
    screenshot("dashboard")
    page.locator("#console-failures tbody tr a").first.click()
    page.wait_for_selector(".run-timeline")


def test_intent_added_in_the_admin_resolves_through_the_api(page, live_server, agent, screenshot):
    raw_key = api_key_create(
        organization=agent.organization, name="e2e", scopes=list(Scope.values)
    ).raw_key
    api = httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {raw_key}"})
    request = {"intent": "summarize", "mode": "sync", "payload": {"text": TEXT}}

    before = api.post("/api/orchestrate", json=request)

    page.goto(f"{live_server.url}/admin/agents/agent/{agent.pk}/change/")
    page.get_by_text("Add another intent").click()
    page.fill("input[name='capabilities-0-name']", "summarize")
    screenshot("agent-intent-added")
    page.click("input[name='_continue']")
    page.wait_for_selector(".messagelist .success")
    after = api.post("/api/orchestrate", json=request)

    assert before.status_code == 400, before.text
    assert before.json()["error"]["code"] == "AGENT_REQUIRED"
    assert after.status_code == 200, after.text
    body = after.json()
    assert body["success"] is True
    assert body["agent"] == "Writer"
    assert body["data"]["summary"]
    assert agent.capabilities.filter(name="summarize").exists()


def test_cancel_a_pending_run_from_the_runs_list(page, live_server, agent, screenshot):
    pending = AgentRun.objects.create(
        organization=agent.organization, agent=agent, intent="summarize"
    )

    page.goto(f"{live_server.url}/admin/runs/agentrun/")
    page.check(f"input[name='_selected_action'][value='{pending.pk}']")
    page.select_option("select[name='action']", "cancel_runs")
    page.click("button[name='index']")
    page.wait_for_selector(".messagelist")

    assert "Cancelled 1 pending run(s)." in page.locator(".messagelist").inner_text()
    pending.refresh_from_db()
    assert pending.status == RunStatus.CANCELLED
    screenshot("run-cancelled")


def test_drain_a_node(page, live_server, screenshot):
    node = OrchestratorNode.objects.create(node_id="node-drain-me", region="eu-west", capacity=4)

    page.goto(f"{live_server.url}/admin/orchestration/orchestratornode/")
    page.check(f"input[name='_selected_action'][value='{node.pk}']")
    page.select_option("select[name='action']", "drain_nodes")
    page.click("button[name='index']")
    page.wait_for_selector(".messagelist")

    assert "Drained 1 node(s): node-drain-me." in page.locator(".messagelist").inner_text()
    node.refresh_from_db()
    assert node.status == NodeStatus.DRAINING
    assert "Draining" in page.locator("#result_list").inner_text()
    screenshot("node-drained")


@pytest.mark.parametrize("width", [1440, 760, 420])
def test_node_table_is_whole_on_narrow_screens(page, live_server, width, screenshot):
    """Every column of the node table can be seen: inside its panel, which scrolls sideways
    when the screen is narrower than the table."""
    OrchestratorNode.objects.create(
        node_id="node-with-a-rather-long-name-eu-west-1",
        region="eu-west-1",
        capacity=8,
        active_runs=3,
        cpu_utilization=0.62,
        memory_utilization=0.48,
    )
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(f"{live_server.url}/admin/")
    table = page.locator("#console-nodes")
    table.wait_for()

    box = table.evaluate(
        """(table) => {
            const panel = table.closest('.console-panel');
            panel.scrollLeft = panel.scrollWidth;  // as far right as the panel goes
            const cell = table.querySelector('thead th:last-child').getBoundingClientRect();
            const edge = panel.getBoundingClientRect();
            return {cellLeft: cell.left, cellRight: cell.right, panelLeft: edge.left,
                    panelRight: edge.right, screen: document.documentElement.clientWidth,
                    text: table.querySelector('thead th:last-child').textContent};
        }"""
    )
    screenshot(f"nodes-{width}px")
    assert box["text"] == "memory"
    assert box["panelLeft"] - 1 <= box["cellLeft"]
    assert box["cellRight"] <= box["panelRight"] + 1
    assert box["panelRight"] <= box["screen"] + 1
