"""Routing: region affinity, health, headroom, priority and capability; async dispatch."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from orchestration import sending
from orchestration.choices import NodeStatus
from orchestration.models import OrchestratorConfigRevision, OrchestratorNode
from orchestration.queues import default_queue, node_queue, region_queue
from orchestration.services import dispatch
from orchestration.services.config import config_cache_clear, config_current
from orchestration.services.routing import (
    DEFAULT_LATENCY_MS,
    InvalidPriority,
    nodes_in_flight,
    nodes_routable_list,
    priority_class,
    route_select,
)
from runs.choices import RunStatus
from runs.models import AgentRun
from tests.factories import AgentFactory, RunFactory
from tests.orchestration.test_orchestrate_async import wait_terminal
from tests.orchestration.workers import WorkerProcess, private_queue

pytestmark = pytest.mark.django_db


def make_node(node_id, region="eu", *, capacity=4, active=0, status=NodeStatus.ACTIVE, **extra):
    extra.setdefault("last_heartbeat_at", timezone.now())
    extra.setdefault("capabilities", ["test-sleep"])
    extra.setdefault("metadata", {"queues": [node_queue(node_id), region_queue(region)]})
    return OrchestratorNode.objects.create(
        node_id=node_id,
        region=region,
        capacity=capacity,
        active_runs=active,
        status=status,
        **extra,
    )


def test_region_local_node_with_most_headroom_is_picked():
    make_node("eu-1", capacity=4, active=3)
    make_node("eu-2", capacity=4, active=1)
    make_node("us-1", region="us", capacity=50, active=0)  # more room, wrong region
    decision = route_select(source_region="eu", priority="normal")
    assert decision.target_node.node_id == "eu-2"
    assert decision.queue == node_queue("eu-2")
    assert decision.fallback is False
    assert decision.region == "eu"
    assert "region-local node eu-2" in decision.reason


def test_draining_unhealthy_failed_and_stale_nodes_are_skipped():
    stale = timezone.now() - timedelta(seconds=60)  # 3 x 5 s is the default limit
    make_node("eu-draining", capacity=100, status=NodeStatus.DRAINING)
    make_node("eu-unhealthy", capacity=100, status=NodeStatus.UNHEALTHY)
    make_node("eu-failed", capacity=100, status=NodeStatus.FAILED)
    make_node("eu-stale", capacity=100, last_heartbeat_at=stale)
    make_node("eu-ok", capacity=2)
    decision = route_select(source_region="eu", priority="normal")
    assert decision.target_node.node_id == "eu-ok"
    assert decision.considered == ["eu-ok"]


def test_falls_back_to_another_region_and_says_so():
    make_node("us-1", region="us", capacity=4, active=2)
    make_node("us-2", region="us", capacity=4, active=0)
    decision = route_select(source_region="ap", priority="normal")
    assert decision.target_node.node_id == "us-2"
    assert decision.fallback is True
    assert "fell back to region 'us'" in decision.reason


def test_falls_back_when_the_local_region_is_saturated():
    make_node("eu-1", capacity=2, active=2)
    make_node("us-1", region="us", capacity=2, active=0)
    decision = route_select(source_region="eu", priority="normal")
    assert decision.target_node.node_id == "us-1"
    assert decision.fallback is True
    assert "saturated" in decision.reason


def test_no_candidate_means_the_default_queue():
    decision = route_select(source_region="eu", priority="normal")
    assert decision.target_node is None
    assert decision.queue == default_queue()
    assert decision.latency_ms == DEFAULT_LATENCY_MS
    make_node("eu-full", capacity=2, active=2)
    full = route_select(source_region="eu", priority="normal")
    assert full.target_node is None
    assert "saturated" in full.reason


def test_high_priority_may_use_the_reserved_share_normal_may_not():
    # capacity 5, reserved share 0.2: normal work may use 4 slots, high work all 5.
    make_node("eu-1", capacity=5, active=4)
    assert route_select(source_region="eu", priority="normal").target_node is None
    assert route_select(source_region="eu", priority=5).target_node is None
    high = route_select(source_region="eu", priority="high")
    assert high.target_node.node_id == "eu-1"
    assert high.headroom == pytest.approx(1.0)
    assert route_select(source_region="eu", priority=7).target_node.node_id == "eu-1"


def test_reserved_share_comes_from_the_live_configuration():
    OrchestratorConfigRevision.objects.create(
        document={"routing": {"reserved_high_priority_share": 0.0}}
    )
    config_cache_clear()
    make_node("eu-1", capacity=5, active=4)
    assert route_select(source_region="eu", priority="normal").target_node.node_id == "eu-1"


def test_capability_filter():
    make_node("eu-sleep", capacity=10, capabilities=["test-sleep"])
    make_node("eu-echo", capacity=2, capabilities=["test-echo"])
    make_node("eu-any", capacity=1, capabilities=["*"])
    assert route_select(source_region="eu", capability="test-echo").target_node.node_id == (
        "eu-echo"
    )
    # Only the wildcard node runs an agent nobody lists.
    assert route_select(source_region="eu", capability="other").target_node.node_id == "eu-any"
    OrchestratorNode.objects.filter(node_id="eu-any").delete()
    assert route_select(source_region="eu", capability="other").target_node is None


def test_ties_go_to_the_lowest_node_id():
    make_node("eu-b", capacity=4)
    make_node("eu-a", capacity=4)
    assert route_select(source_region="eu").target_node.node_id == "eu-a"


def test_runs_routed_since_the_last_heartbeat_count_as_load():
    make_node("eu-a", capacity=4, active=0)
    make_node("eu-b", capacity=4, active=0)
    agent = AgentFactory()
    for _ in range(2):
        RunFactory(agent=agent, status=RunStatus.PENDING, node_id="eu-a")
    RunFactory(agent=agent, status=RunStatus.SUCCESS, node_id="eu-b")  # finished: no load
    decision = route_select(source_region="eu")
    assert decision.target_node.node_id == "eu-b"


def test_latency_is_the_median_of_the_nodes_recent_runs():
    make_node("eu-1")
    agent = AgentFactory()
    now = timezone.now()
    for duration in (100, 200, 900):
        RunFactory(
            agent=agent,
            status=RunStatus.SUCCESS,
            node_id="eu-1",
            completed_at=now - timedelta(minutes=1),
            duration_ms=duration,
        )
    # Too old, and another node's: neither counts.
    RunFactory(
        agent=agent,
        status=RunStatus.SUCCESS,
        node_id="eu-1",
        completed_at=now - timedelta(hours=1),
        duration_ms=50_000,
    )
    RunFactory(
        agent=agent, status=RunStatus.SUCCESS, node_id="eu-2", duration_ms=1, completed_at=now
    )
    decision = route_select(source_region="eu", now=now)
    assert decision.latency_ms == 200
    assert decision.latency_samples == 3


def test_node_without_advertised_queues_gets_the_default_queue():
    make_node("api-1", capacity=4, metadata={"kind": "api", "queues": []})
    decision = route_select(source_region="eu")
    assert decision.target_node.node_id == "api-1"
    assert decision.queue == default_queue()
    assert not decision.node_bound
    # Dispatch of queued work only considers nodes that consume a queue.
    assert route_select(source_region="eu", require_queue=True).target_node is None


def test_region_queue_when_only_that_is_advertised():
    make_node("eu-1", metadata={"queues": [region_queue("eu"), default_queue()]})
    decision = route_select(source_region="eu")
    assert decision.queue == region_queue("eu")
    assert not decision.node_bound


@pytest.mark.parametrize(
    ("priority", "expected"),
    [
        (None, "normal"),
        ("normal", "normal"),
        ("HIGH", "high"),
        ("low", "low"),
        (0, "low"),
        (5, "normal"),
        (6, "normal"),
        (7, "high"),
        (10, "high"),
        ("8", "high"),
        (7.0, "high"),
    ],
)
def test_priority_classes(priority, expected):
    assert priority_class(priority) == expected


@pytest.mark.parametrize("priority", ["urgent", 11, -1, 7.5, True])
def test_invalid_priorities(priority):
    with pytest.raises(InvalidPriority):
        priority_class(priority)


# --- dispatch ------------------------------------------------------------------------------


@pytest.fixture
def sent(monkeypatch):
    calls = []
    monkeypatch.setattr(
        sending, "execute_run_send", lambda run_id, **options: calls.append(([run_id], options))
    )
    return calls


def test_async_run_is_sent_to_the_routed_node_queue_and_names_the_node(
    settings, sent, django_capture_on_commit_callbacks
):
    settings.ORCHESTRATOR_REGION = "eu"
    make_node("eu-1", capabilities=["test-sleep"])
    agent = AgentFactory(handler="test-sleep")
    run = RunFactory(agent=agent)
    with django_capture_on_commit_callbacks(execute=True):
        dispatch.run_enqueue(run, total_timeout_s=30)
    assert sent == [
        ([str(run.pk)], {"queue": "node.eu-1", "soft_time_limit": 40, "time_limit": 60})
    ]
    assert AgentRun.objects.get(pk=run.pk).node_id == "eu-1"
    assert run.node_id == "eu-1"


def test_async_run_falls_back_to_the_default_queue(
    settings, sent, django_capture_on_commit_callbacks
):
    settings.ORCHESTRATOR_REGION = "eu"
    make_node("eu-other", capabilities=["test-echo"])  # cannot run this agent
    make_node("eu-api", capabilities=["test-sleep"], metadata={"queues": []})  # takes no queue
    agent = AgentFactory(handler="test-sleep")
    run = RunFactory(agent=agent)
    with django_capture_on_commit_callbacks(execute=True):
        dispatch.run_enqueue(run, total_timeout_s=30)
    assert sent[0][1]["queue"] == default_queue()
    assert AgentRun.objects.get(pk=run.pk).node_id == ""


def test_routing_read_counts_runs_in_flight_up_to_each_nodes_capacity(settings):
    full = make_node("eu-full", capacity=2)
    busy = make_node("eu-busy", capacity=4)
    make_node("eu-idle", capacity=4)
    agent = AgentFactory()
    for _ in range(5):  # more queued than it can take
        RunFactory(agent=agent, status=RunStatus.PENDING, node_id=full.node_id)
    RunFactory(agent=agent, status=RunStatus.RUNNING, node_id=busy.node_id)
    RunFactory(agent=agent, status=RunStatus.SUCCESS, node_id=busy.node_id)  # ended: no load
    RunFactory(agent=agent, status=RunStatus.PENDING, node_id="")  # the default queue's
    nodes = nodes_routable_list(now=timezone.now(), document=config_current())
    assert {n.node_id: n.runs_in_flight for n in nodes} == {
        "eu-busy": 1,
        "eu-full": 2,
        "eu-idle": 0,
    }
    # The capped counts decide as the full ones: the same route as the ORM's count.
    unread = list(OrchestratorNode.objects.order_by("node_id"))
    assert nodes_in_flight(unread) == {"eu-busy": 1, "eu-full": 5}  # none: not listed
    for level in ("normal", "high"):
        read = route_select(source_region="eu", priority=level, nodes=nodes)
        counted = route_select(source_region="eu", priority=level, nodes=unread)
        assert (read.target_node.node_id, read.headroom, read.considered) == (
            counted.target_node.node_id,
            counted.headroom,
            counted.considered,
        )
        assert read.target_node.node_id == "eu-idle"
        assert "eu-full" not in read.considered


@pytest.mark.django_db(transaction=True)
def test_new_async_runs_name_their_node_however_they_were_routed(
    settings, sent, tenant_a, make_agent
):
    """The first async run of a process is routed in its INSERT's statement, then named by
    an UPDATE; the next ones, the fleet known, are routed first and inserted naming it."""
    settings.ORCHESTRATOR_REGION = "eu"
    make_agent("Sleeper", "test-sleep", intents=["nap"])
    node = make_node("eu-1", capacity=100)

    def submit():
        response = tenant_a.client.post(
            "/api/orchestrate", {"intent": "nap", "mode": "async"}, format="json"
        )
        assert response.status_code == 202, response.json()
        return AgentRun.objects.get(pk=response.json()["runId"])

    with CaptureQueriesContext(connection) as captured:
        first = submit()
    writes = [q["sql"].split()[:3] for q in captured.captured_queries if "agent_runs" in q["sql"]]
    assert [w[0] for w in writes[:2]] == ["WITH", "UPDATE"]  # INSERT reading the nodes, UPDATE
    assert dispatch._node_bound_last is True
    with CaptureQueriesContext(connection) as captured:
        second = submit()
    statements = [q["sql"] for q in captured.captured_queries]
    routed = next(i for i, sql in enumerate(statements) if '"orchestrator_nodes"' in sql)
    assert statements[routed + 1].startswith('INSERT INTO "agent_runs"')
    assert not any(sql.startswith("UPDATE") for sql in statements)
    assert first.node_id == second.node_id == "eu-1"
    assert [options["queue"] for _, options in sent] == ["node.eu-1", "node.eu-1"]

    # The fleet gone, the next run goes to the default queue and the hint with it.
    node.delete()
    third = submit()
    assert third.node_id == ""
    assert sent[-1][1]["queue"] == default_queue()
    assert dispatch._node_bound_last is False


# --- API ---------------------------------------------------------------------------------


def test_route_api_shape(tenant_a):
    make_node("eu-1", capacity=4, active=1, endpoint="celery://eu-1")
    response = tenant_a.client.post(
        "/api/orchestration/route",
        {"requestId": "req-1", "sourceRegion": "eu", "priority": "high", "payload": {"a": 1}},
        format="json",
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["success"] is True
    assert body["requestId"] == "req-1"
    assert body["timestamp"]
    routing = body["routing"]
    assert routing["targetNode"]["id"] == "eu-1"
    assert routing["targetNode"]["region"] == "eu"
    assert routing["targetNode"]["headroom"] == 3
    assert routing["route"] == {
        "queue": "node.eu-1",
        "strategy": "region-affinity",
        "reason": routing["route"]["reason"],
        "region": "eu",
        "priority": "high",
        "fallback": False,
    }
    assert routing["latency"] == DEFAULT_LATENCY_MS
    assert routing["latencySamples"] == 0


def test_route_api_without_candidates_and_with_a_capability(tenant_a):
    body = tenant_a.client.post(
        "/api/orchestration/route",
        {"requestId": "req-2", "sourceRegion": "eu", "priority": 3, "capability": "x"},
        format="json",
    ).json()
    assert body["routing"]["targetNode"] is None
    assert body["routing"]["route"]["queue"] == default_queue()
    assert body["routing"]["route"]["region"] is None


@pytest.mark.parametrize("priority", ["urgent", "", "HIGH", "8", 11, 7.5, True, None])
def test_route_api_refuses_a_priority_outside_its_schema(tenant_a, priority):
    """A name as the schema writes it or a whole number 0..10; no blank, case or digits."""
    bad = tenant_a.client.post(
        "/api/orchestration/route", {"sourceRegion": "eu", "priority": priority}, format="json"
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "INVALID_REQUEST"
    assert list(bad.json()["error"]["details"]) == ["priority"]


def test_route_api_rejects_a_bad_priority_and_anonymous_callers(tenant_a, anonymous_client):
    bad = tenant_a.client.post(
        "/api/orchestration/route", {"sourceRegion": "eu", "priority": "urgent"}, format="json"
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "INVALID_REQUEST"
    assert "priority" in bad.json()["error"]["details"]
    anonymous = anonymous_client.post("/api/orchestration/route", {}, format="json")
    assert anonymous.status_code == 401


# --- end to end: a real worker node ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_async_run_reaches_a_worker_through_its_node_queue_only(settings, tenant_a, make_agent):
    """Nobody consumes the default queue here: the run can only finish via the node queue."""
    settings.RUN_DEFAULT_QUEUE = private_queue()  # no consumer
    worker = WorkerProcess("route-e2e", private_queue()).start()
    try:
        deadline = time.monotonic() + 20
        while not OrchestratorNode.objects.filter(
            node_id="route-e2e", status=NodeStatus.ACTIVE
        ).exists():
            assert time.monotonic() < deadline, "the worker never registered as a node"
            time.sleep(0.1)
        node = OrchestratorNode.objects.get(node_id="route-e2e")
        assert node_queue("route-e2e") in node.metadata["queues"]

        make_agent("Sleeper", "test-sleep", intents=["nap"])
        response = tenant_a.client.post(
            "/api/orchestrate",
            {"intent": "nap", "mode": "async", "payload": {"sleep_ms": 10}},
            format="json",
        )
        assert response.status_code == 202, response.json()
        run = wait_terminal(response.json()["runId"])
        assert run.status == RunStatus.SUCCESS
        assert run.node_id == "route-e2e"
    finally:
        worker.stop()
