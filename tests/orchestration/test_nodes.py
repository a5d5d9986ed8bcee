"""Nodes: the API, heartbeats, the expiry sweep with a controlled clock, failover, the reaper."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from orchestration import sending
from orchestration.choices import EventType, NodeStatus
from orchestration.models import OrchestratorEvent, OrchestratorNode
from orchestration.queues import default_queue, node_queue
from orchestration.services import nodes as node_services
from orchestration.services import reaper
from orchestration.services.config import config_current
from runs import services as run_services
from runs.choices import RunStatus
from runs.models import AgentRun, AgentRunMetric, ToolExecution
from tests.factories import RunFactory

pytestmark = pytest.mark.django_db

NODE_TOKEN = "node_test_5f0c2a9e7d"
T0 = timezone.now().replace(microsecond=0)


@pytest.fixture
def node_client(settings) -> APIClient:
    settings.ORCHESTRATOR_NODE_TOKEN = NODE_TOKEN
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {NODE_TOKEN}")
    return client


@pytest.fixture
def enqueued(monkeypatch) -> list[dict]:
    """execute_run messages the services send, instead of a broker."""
    sent: list[dict] = []

    def record(run_id, **options):
        sent.append({"run_id": run_id, **options})

    monkeypatch.setattr(sending, "execute_run_send", record)
    return sent


def register(node_id: str, *, region: str = "eu", capacity: int = 4, now=T0, **extra):
    return node_services.node_register(
        node_id=node_id,
        region=region,
        endpoint=f"celery://{node_id}",
        capabilities=["test-sleep"],
        capacity=capacity,
        metadata={"queues": [node_queue(node_id), default_queue()]},
        now=now,
        **extra,
    )


def running_run(agent, node_id: str, *, attempt: int = 0) -> AgentRun:
    """A run claimed by node_id (attempt + 1 after the claim), as run_execute claims it."""
    run = RunFactory(agent=agent, attempt=attempt, queued_at=T0)
    assert run_services.run_claim(run=run, node_id=node_id, lease_seconds=60)
    return run


def events(type_: str) -> list[OrchestratorEvent]:
    return list(OrchestratorEvent.objects.filter(type=type_).order_by("id"))


# --- the API -------------------------------------------------------------------------------


def test_a_node_registers_heartbeats_drains_and_unregisters_over_the_api(node_client):
    response = node_client.post(
        "/api/orchestration/nodes/register",
        {
            "id": "edge-1",
            "region": "eu-west",
            "endpoint": "https://edge-1.example.com",
            "capabilities": ["summarize", "classify"],
            "metadata": {"zone": "b"},
            "capacity": 8,
            "version": "2.1.0",
        },
        format="json",
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["success"] is True
    node = body["node"]
    assert node["id"] == "edge-1"
    assert node["status"] == "ACTIVE"
    assert node["capacity"] == 8
    assert node["capabilities"] == ["classify", "summarize"]
    assert node["metadata"] == {"zone": "b"}
    assert set(node) >= {
        "id", "region", "endpoint", "capabilities", "metadata", "status", "capacity",
        "activeRuns", "cpuUtilization", "memoryUtilization", "version", "lastHeartbeatAt",
        "registeredAt", "heartbeatAgeS",
    }  # fmt: skip
    assert events(EventType.NODE_REGISTERED)[-1].node_id == "edge-1"

    response = node_client.post(
        "/api/orchestration/nodes/edge-1/heartbeat",
        {"activeRuns": 3, "cpuUtilization": 0.42, "memoryUtilization": 0.5, "capacity": 10},
        format="json",
    )
    assert response.status_code == 200, response.json()
    node = response.json()["node"]
    assert (node["activeRuns"], node["capacity"], node["cpuUtilization"]) == (3, 10, 0.42)
    assert node["memoryUtilization"] == 0.5

    response = node_client.post("/api/orchestration/nodes/edge-1/drain")
    assert response.status_code == 200
    assert response.json()["node"]["status"] == "DRAINING"

    response = node_client.delete("/api/orchestration/nodes/edge-1")
    assert response.status_code == 200
    assert response.json()["node"]["status"] == "OFFLINE"
    assert OrchestratorNode.objects.get(node_id="edge-1").status == NodeStatus.OFFLINE
    assert [e.payload["to"] for e in events(EventType.NODE_STATUS_CHANGED)] == ["DRAINING"]
    assert events(EventType.NODE_UNREGISTERED)[-1].payload["from"] == "DRAINING"

    # Draining an OFFLINE node is a conflict, in the envelope.
    response = node_client.post("/api/orchestration/nodes/edge-1/drain")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "INVALID_NODE_STATE"


def test_an_organization_api_key_reads_the_fleet_but_cannot_change_it(tenant_a, node_client):
    register("w-1")
    for method, path, body in [
        ("post", "/api/orchestration/nodes/register", {"id": "x", "region": "eu",
                                                        "endpoint": "", "capabilities": []}),
        ("post", "/api/orchestration/nodes/w-1/heartbeat", {}),
        ("post", "/api/orchestration/nodes/w-1/drain", None),
        ("delete", "/api/orchestration/nodes/w-1", None),
        ("post", "/api/orchestration/failover/w-1", None),
    ]:  # fmt: skip
        response = getattr(tenant_a.client, method)(path, body, format="json")
        assert response.status_code == 403, (path, response.json())
        assert response.json()["error"]["code"] == "FORBIDDEN"
    assert OrchestratorNode.objects.get(node_id="w-1").status == NodeStatus.ACTIVE
    assert not OrchestratorNode.objects.filter(node_id="x").exists()

    listed = tenant_a.client.get("/api/orchestration/nodes")
    assert listed.status_code == 200
    assert listed.json()["count"] == 1


def test_a_bad_node_token_and_no_credentials_are_refused(node_client, anonymous_client):
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Bearer node_wrong")
    assert bad.get("/api/orchestration/nodes").status_code == 401
    assert anonymous_client.get("/api/orchestration/nodes").status_code in (401, 403)


def test_discovery_filters_by_region_status_and_capability(node_client):
    register("a-1", region="eu")
    register("a-2", region="us")
    node_services.node_register(
        node_id="gpu-1", region="eu", capabilities=["vision"], capacity=2, now=T0
    )
    node_services.node_drain(node_id="a-1")

    def ids(query: str) -> list[str]:
        body = node_client.get(f"/api/orchestration/nodes{query}").json()
        assert body["success"] is True and body["count"] == len(body["nodes"])
        return [n["id"] for n in body["nodes"]]

    assert ids("") == ["a-1", "a-2", "gpu-1"]
    assert ids("?region=eu") == ["a-1", "gpu-1"]
    assert ids("?status=ACTIVE") == ["a-2", "gpu-1"]
    assert ids("?capability=vision") == ["gpu-1"]
    assert ids("?capability=test-sleep&region=eu") == ["a-1"]
    response = node_client.get("/api/orchestration/nodes?status=SLEEPY")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_REQUEST"


def test_listing_nodes_costs_the_same_queries_for_three_nodes_or_thirty(
    node_client, django_assert_max_num_queries, django_assert_num_queries
):
    for i in range(3):
        register(f"n-{i:02}")
    # Authentication by node token reads nothing; the list is one query.
    with django_assert_num_queries(1):
        assert node_client.get("/api/orchestration/nodes").json()["count"] == 3
    for i in range(3, 30):
        register(f"n-{i:02}")
    with django_assert_num_queries(1):
        assert (
            node_client.get("/api/orchestration/nodes?capability=test-sleep").json()["count"] == 30
        )


def test_unknown_nodes_answer_404_and_bad_bodies_400(node_client):
    for method, path in [
        ("post", "/api/orchestration/nodes/ghost/heartbeat"),
        ("post", "/api/orchestration/nodes/ghost/drain"),
        ("delete", "/api/orchestration/nodes/ghost"),
        ("post", "/api/orchestration/failover/ghost"),
    ]:
        response = getattr(node_client, method)(path, {}, format="json")
        assert response.status_code == 404, path
        assert response.json()["success"] is False
        assert response.json()["error"]["code"] == "NOT_FOUND"

    response = node_client.post(
        "/api/orchestration/nodes/register", {"region": "eu"}, format="json"
    )
    assert response.status_code == 400
    details = response.json()["error"]["details"]
    assert {"id", "endpoint", "capabilities"} <= set(details)
    response = node_client.post(
        "/api/orchestration/nodes/register",
        {"id": "bad id/with slash", "region": "eu", "endpoint": "", "capabilities": []},
        format="json",
    )
    assert response.status_code == 400
    register("w-1")
    response = node_client.post(
        "/api/orchestration/nodes/w-1/heartbeat", {"cpuUtilization": 7}, format="json"
    )
    assert response.status_code == 400
    assert "cpuUtilization" in response.json()["error"]["details"]


def test_failover_over_the_api_answers_the_seed_shape(node_client, make_agent, enqueued):
    agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
    register("w-1")
    register("w-2", now=timezone.now())
    run = running_run(agent, "w-1")
    response = node_client.post("/api/orchestration/failover/w-1")
    assert response.status_code == 200, response.json()
    result = response.json()["result"]
    assert result["backupNode"] == "w-2"
    assert result["reassignedRuns"] == 1
    assert result["failedRuns"] == 0
    assert result["queue"] == node_queue("w-2")
    assert "w-2" in result["message"]
    run.refresh_from_db()
    assert (run.status, run.node_id) == (RunStatus.PENDING, "w-2")


# --- heartbeats ----------------------------------------------------------------------------


def test_a_heartbeat_is_one_update_of_the_node_plus_one_of_its_leases(
    make_agent, django_assert_num_queries
):
    agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
    register("w-1")
    run = running_run(agent, "w-1")
    other = running_run(agent, "w-2")
    config_current()  # the live configuration is cached per process
    later = timezone.now() + timedelta(seconds=30)
    with django_assert_num_queries(2):
        result = node_services.node_heartbeat(
            node_id="w-1", active_runs=1, cpu_utilization=0.25, memory_utilization=0.5, now=later
        )
    assert result.live and not result.revived and result.leases_extended == 1
    node = OrchestratorNode.objects.get(node_id="w-1")
    assert (node.last_heartbeat_at, node.active_runs, node.cpu_utilization) == (later, 1, 0.25)
    run.refresh_from_db()
    other.refresh_from_db()
    assert run.lease_expires_at == later + timedelta(seconds=60)
    assert other.lease_expires_at < run.lease_expires_at  # another node's lease is untouched


def test_a_workers_heartbeat_extends_only_the_leases_of_the_runs_it_executes(make_agent):
    """held_runs: a run whose pool process died, or an earlier process left, runs out."""
    agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
    register("w-1")
    executing = running_run(agent, "w-1")
    orphaned = running_run(agent, "w-1")
    claimed_lease = AgentRun.objects.get(pk=orphaned.pk).lease_expires_at
    config_current()
    later = timezone.now() + timedelta(seconds=30)
    result = node_services.node_heartbeat(node_id="w-1", held_runs={str(executing.pk)}, now=later)
    assert result.leases_extended == 1
    executing.refresh_from_db()
    orphaned.refresh_from_db()
    assert executing.lease_expires_at == later + timedelta(seconds=60)
    assert orphaned.lease_expires_at == claimed_lease  # runs out: the reaper takes it back
    idle = node_services.node_heartbeat(node_id="w-1", held_runs=set(), now=later)
    assert idle.live and idle.leases_extended == 0


def test_a_heartbeat_brings_an_unhealthy_node_back_and_a_drained_one_back_to_draining():
    register("w-1")
    register("w-2")
    node_services.node_drain(node_id="w-2")
    swept = reaper.node_sweep(now=T0 + timedelta(seconds=16))
    assert swept.unhealthy == ["w-1", "w-2"]
    back = node_services.node_heartbeat(node_id="w-1", now=T0 + timedelta(seconds=17))
    assert back.revived and back.status == NodeStatus.ACTIVE
    back = node_services.node_heartbeat(node_id="w-2", now=T0 + timedelta(seconds=17))
    assert back.revived and back.status == NodeStatus.DRAINING
    changes = [(e.node_id, e.payload["from"], e.payload["to"]) for e in
               events(EventType.NODE_STATUS_CHANGED)]  # fmt: skip
    assert changes[-2:] == [("w-1", "UNHEALTHY", "ACTIVE"), ("w-2", "UNHEALTHY", "DRAINING")]


def test_a_heartbeat_from_a_failed_node_leaves_it_failed_until_it_registers_again():
    register("w-1")
    reaper.node_failover(node_id="w-1", now=T0)
    result = node_services.node_heartbeat(node_id="w-1", now=T0 + timedelta(seconds=1))
    assert not result.live and result.status == NodeStatus.FAILED
    assert OrchestratorNode.objects.get(node_id="w-1").status == NodeStatus.FAILED
    register("w-1", now=T0 + timedelta(seconds=2))
    assert OrchestratorNode.objects.get(node_id="w-1").status == NodeStatus.ACTIVE
    with pytest.raises(node_services.NodeNotFound):
        node_services.node_heartbeat(node_id="ghost")


# --- expiry, failover, fencing ----------------------------------------------------------------


def test_heartbeat_expiry_walks_active_unhealthy_failed_and_fails_the_node_over(
    make_agent, enqueued, django_capture_on_commit_callbacks
):
    agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
    register("eu-1", region="eu")
    register("eu-2", region="eu", capacity=4)
    register("us-1", region="us", capacity=64)  # more headroom, but another region
    runs = [running_run(agent, "eu-1") for _ in range(3)]
    stale = AgentRun.objects.get(pk=runs[0].pk)  # the lost owner's copy, attempt 1
    routed = RunFactory(agent=agent, node_id="eu-1", queued_at=T0)  # PENDING, on its queue

    def beat_others(at):
        for node_id in ("eu-2", "us-1"):
            node_services.node_heartbeat(node_id=node_id, now=at)

    # 3 intervals of 5 s without a heartbeat: UNHEALTHY.
    at = T0 + timedelta(seconds=16)
    beat_others(at)
    swept = reaper.node_sweep(now=at)
    assert (swept.unhealthy, swept.failed) == (["eu-1"], [])
    assert OrchestratorNode.objects.get(node_id="eu-1").status == NodeStatus.UNHEALTHY

    # 6 intervals: FAILED, failed over at once to the same-region node.
    at = T0 + timedelta(seconds=31)
    beat_others(at)
    with django_capture_on_commit_callbacks(execute=True):
        swept = reaper.node_sweep(now=at)
    assert swept.failed == ["eu-1"]
    (failover,) = swept.failovers
    assert failover.backup_node == "eu-2"
    assert failover.reassigned_runs == 4 and failover.failed_runs == 0
    assert OrchestratorNode.objects.get(node_id="eu-1").status == NodeStatus.FAILED

    changes = [(e.payload["from"], e.payload["to"]) for e in
               events(EventType.NODE_STATUS_CHANGED) if e.node_id == "eu-1"]  # fmt: skip
    assert changes == [("ACTIVE", "UNHEALTHY"), ("UNHEALTHY", "FAILED")]
    (event,) = events(EventType.NODE_FAILOVER)
    assert event.payload["backupNode"] == "eu-2"
    assert event.payload["reassignedRuns"] == 4
    assert sorted(event.payload["runs"]) == sorted(str(r.pk) for r in [*runs, routed])

    for run in [*runs, routed]:
        run.refresh_from_db()
        assert (run.status, run.node_id) == (RunStatus.PENDING, "eu-2")
    assert sorted(m["run_id"] for m in enqueued) == sorted(str(r.pk) for r in [*runs, routed])
    assert {m["queue"] for m in enqueued} == {node_queue("eu-2")}
    assert all(m["time_limit"] > m["soft_time_limit"] for m in enqueued)

    # The lost owner finishes late: its attempt is no longer current, nothing is written.
    assert not run_services.run_finish(
        run=stale,
        outcome=run_services.RunOutcome(status=RunStatus.SUCCESS, output={"late": True}),
        metrics={},
        meta={},
    )
    # The backup claims it (attempt 2); the old attempt still cannot write over it.
    fresh = AgentRun.objects.get(pk=runs[0].pk)
    assert run_services.run_claim(run=fresh, node_id="eu-2", lease_seconds=60)
    assert fresh.attempt == 2
    stale = AgentRun.objects.get(pk=runs[0].pk)
    stale.attempt = 1
    assert not run_services.run_finish(
        run=stale,
        outcome=run_services.RunOutcome(status=RunStatus.SUCCESS, output={"late": True}),
        metrics={},
        meta={},
    )
    assert run_services.run_finish(
        run=fresh,
        outcome=run_services.RunOutcome(status=RunStatus.SUCCESS, output={"ok": True}),
        metrics={},
        meta={},
    )
    fresh.refresh_from_db()
    assert (fresh.status, fresh.output, fresh.node_id) == (RunStatus.SUCCESS, {"ok": True}, "eu-2")


def test_failover_falls_back_to_another_region_and_to_the_default_queue(make_agent, enqueued):
    agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
    register("eu-1", region="eu")
    register("us-1", region="us", now=timezone.now())
    # Same region and idle, but an API process consumes no queue: never a backup.
    node_services.node_register(
        node_id="eu-api", region="eu", capacity=64, metadata={"kind": "api", "queues": []}
    )
    running_run(agent, "eu-1")
    result = reaper.node_failover(node_id="eu-1")
    assert result.backup_node == "us-1"

    register("eu-3", region="eu")
    lonely = running_run(agent, "eu-3")
    node_services.node_unregister(node_id="us-1")
    result = reaper.node_failover(node_id="eu-3")
    assert result.backup_node is None
    assert result.queue == default_queue()
    lonely.refresh_from_db()
    assert (lonely.status, lonely.node_id) == (RunStatus.PENDING, "")


def test_runs_out_of_attempts_fail_node_lost(make_agent, enqueued):
    agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
    register("w-1")
    register("w-2", now=timezone.now())
    last_try = running_run(agent, "w-1", attempt=2)  # claimed: attempt 3 of 3
    second_try = running_run(agent, "w-1", attempt=1)
    result = reaper.node_failover(node_id="w-1")
    assert (result.reassigned_runs, result.failed_runs) == (1, 1)
    last_try.refresh_from_db()
    assert last_try.status == RunStatus.FAILED
    assert last_try.error_code == "NODE_LOST"
    assert last_try.completed_at is not None and last_try.lease_expires_at is None
    assert last_try.metrics["error"]["code"] == "NODE_LOST"
    (failed,) = events(EventType.RUN_FAILED)
    assert failed.run_id == last_try.pk and failed.payload["code"] == "NODE_LOST"
    second_try.refresh_from_db()
    assert second_try.status == RunStatus.PENDING


# --- the reaper ----------------------------------------------------------------------------


def test_the_reaper_requeues_runs_whose_lease_expired(
    make_agent, enqueued, django_capture_on_commit_callbacks
):
    agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
    register("w-1")
    register("w-2", now=timezone.now() + timedelta(seconds=120))
    run = running_run(agent, "w-1")
    spent = running_run(agent, "w-1", attempt=2)
    held = running_run(agent, "w-2")
    # w-2 keeps heartbeating, so its lease moves with the clock; w-1 went silent.
    later = timezone.now() + timedelta(seconds=120)
    node_services.node_heartbeat(node_id="w-2", now=later)
    with django_capture_on_commit_callbacks(execute=True):
        result = reaper.runs_reap(now=later + timedelta(seconds=1))
    assert result.requeued_running == [str(run.pk)]
    assert result.failed_running == [str(spent.pk)]
    run.refresh_from_db()
    held.refresh_from_db()
    assert (run.status, run.node_id, run.attempt) == (RunStatus.PENDING, "w-2", 1)
    assert held.status == RunStatus.RUNNING
    assert [m["run_id"] for m in enqueued] == [str(run.pk)]
    (event,) = events(EventType.RUN_REQUEUED)
    assert event.payload["reason"] == "lease expired" and event.payload["count"] == 1


def test_the_reaper_reenqueues_pending_runs_nobody_picked_up_a_bounded_number_of_times(
    make_agent, enqueued, django_capture_on_commit_callbacks
):
    agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
    timeout = config_current()["nodes"]["pending_timeout_s"]
    max_attempts = config_current()["nodes"]["max_attempts"]
    lost = RunFactory(agent=agent, queued_at=T0 - timedelta(seconds=timeout + 1))
    now = T0
    for n in range(1, max_attempts + 1):
        with django_capture_on_commit_callbacks(execute=True):
            result = reaper.runs_reap(now=now)
        assert result.requeued_pending == [str(lost.pk)]
        lost.refresh_from_db()
        assert lost.meta["requeues"] == n and lost.queued_at == now
        now += timedelta(seconds=timeout + 1)
    assert [m["queue"] for m in enqueued] == [default_queue()] * max_attempts
    assert {m["run_id"] for m in enqueued} == {str(lost.pk)}
    fresh = RunFactory(agent=agent, queued_at=now - timedelta(seconds=timeout - 1))
    result = reaper.runs_reap(now=now)
    assert result.failed_pending == [str(lost.pk)]
    assert result.requeued_pending == []
    fresh.refresh_from_db()
    assert fresh.status == RunStatus.PENDING and "requeues" not in fresh.meta
    lost.refresh_from_db()
    assert (lost.status, lost.error_code) == (RunStatus.FAILED, "PENDING_TIMEOUT")


def test_the_reap_command_sweeps_and_reaps_once(make_agent, enqueued, capsys):
    agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
    register("w-1", now=timezone.now() - timedelta(minutes=5))
    register("w-2", now=timezone.now())
    run = running_run(agent, "w-1")
    call_command("reap")
    out = capsys.readouterr().out
    assert "node w-1: FAILED" in out
    assert "1 run(s) reassigned to node w-2" in out
    assert "reap: 1 change(s)" in out
    run.refresh_from_db()
    assert (run.status, run.node_id) == (RunStatus.PENDING, "w-2")
    assert OrchestratorNode.objects.get(node_id="w-1").status == NodeStatus.FAILED


# --- run_execute when its run is taken away ---------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_finish_after_failover_is_discarded_and_recorded_as_stale(
    tenant_a, make_agent, enqueued, monkeypatch
):
    """The handler is still working when its node is failed over: its result is dropped."""
    from agents.handlers.registry import registry
    from orchestration.services.execution import run_execute
    from tests.orchestration.handlers import SleepHandler

    class FailoverMidRun(SleepHandler):
        key = "test-failover-mid-run"

        def handle(self, request, ctx):
            output = super().handle(request, ctx)
            try:
                reaper.node_failover(node_id="lost-node", reason="test")
            finally:
                connection.close()  # this handler thread's own connection
            return output

    registry.register(FailoverMidRun)
    try:
        agent = make_agent("Mid", "test-failover-mid-run", intents=["mid"])
        register("lost-node")
        register("backup", now=timezone.now())
        run = RunFactory(agent=agent, queued_at=timezone.now())
        assert run_execute(run=run, node_id="lost-node")
    finally:
        registry.unregister("test-failover-mid-run")
    run.refresh_from_db()
    assert (run.status, run.node_id, run.attempt) == (RunStatus.PENDING, "backup", 1)
    assert run.output is None
    # Nothing the stale attempt recorded was flushed.
    assert not ToolExecution.objects.filter(run=run).exists()
    assert not AgentRunMetric.objects.filter(run=run).exists()
    (stale,) = events(EventType.RUN_STALE_COMPLETION)
    assert stale.run_id == run.pk
    assert stale.payload["attempt"] == 1 and stale.payload["outcome"] == RunStatus.SUCCESS
    assert stale.node_id == "lost-node"
    assert [m["run_id"] for m in enqueued] == [str(run.pk)]


# --- admin -----------------------------------------------------------------------------------


def test_admin_actions_drain_fail_over_and_remove(admin_client, make_agent, enqueued):
    agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
    for node_id in ("w-1", "w-2", "w-3"):
        register(node_id, now=timezone.now())
    run = running_run(agent, "w-2")
    url = "/admin/orchestration/orchestratornode/"
    page = admin_client.get(url)
    assert page.status_code == 200
    assert b"heartbeat age" in page.content.lower()

    def act(action: str, node_id: str):
        pk = OrchestratorNode.objects.get(node_id=node_id).pk
        return admin_client.post(url, {"action": action, "_selected_action": [pk]}, follow=True)

    assert act("drain_nodes", "w-1").status_code == 200
    assert OrchestratorNode.objects.get(node_id="w-1").status == NodeStatus.DRAINING
    response = act("fail_over_nodes", "w-2")
    assert b"reassigned to node w-3" in response.content
    run.refresh_from_db()
    assert (run.status, run.node_id) == (RunStatus.PENDING, "w-3")
    act("remove_nodes", "w-3")
    assert OrchestratorNode.objects.get(node_id="w-3").status == NodeStatus.OFFLINE


# --- this process as a node -------------------------------------------------------------------


def test_run_execute_starts_the_node_runtime_only_when_autoregister_is_on(
    settings, make_agent, monkeypatch
):
    from orchestration.services import execution

    calls: list[int] = []
    monkeypatch.setattr(execution.node_runtime, "ensure_started", lambda: calls.append(1))
    agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
    execution.run_execute(run=RunFactory(agent=agent, queued_at=T0), node_id="api-1")
    assert calls == []
    settings.NODE_AUTOREGISTER = True
    execution.run_execute(run=RunFactory(agent=agent, queued_at=T0), node_id="api-1")
    assert calls == [1]


@pytest.mark.django_db(transaction=True)
def test_an_api_process_registers_once_heartbeats_and_goes_offline_at_exit(
    settings, make_agent, enqueued
):
    from orchestration.worker import NodeRuntime

    settings.NODE_AUTOREGISTER = True
    settings.ORCHESTRATOR_NODE_ID = "api-test-1"
    runtime = NodeRuntime()
    runtime.ensure_started()
    try:
        deadline = timezone.now() + timedelta(seconds=10)
        while not OrchestratorNode.objects.filter(node_id="api-test-1").exists():
            assert timezone.now() < deadline, "the node did not register"
            time.sleep(0.02)
        thread = runtime._thread
        runtime.ensure_started()  # once per process
        assert runtime._thread is thread and thread.is_alive()
        node = OrchestratorNode.objects.get(node_id="api-test-1")
        assert node.status == NodeStatus.ACTIVE
        assert node.metadata["kind"] == "api" and node.metadata["queues"] == []
        assert node.capacity == settings.HANDLER_THREADS
        assert "test-sleep" in node.capabilities

        agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
        run = running_run(agent, "api-test-1")
        runtime.beat()
        node.refresh_from_db()
        assert node.active_runs == 1
        assert 0.0 <= node.cpu_utilization <= 1.0 and 0.0 <= node.memory_utilization <= 1.0

        # Failed over while in fact alive: the next beat makes it a fresh node again.
        reaper.node_failover(node_id="api-test-1")
        run.refresh_from_db()
        assert run.status == RunStatus.PENDING
        runtime.beat()
        assert OrchestratorNode.objects.get(node_id="api-test-1").status == NodeStatus.ACTIVE
    finally:
        runtime.stop()
    assert not thread.is_alive()
    assert OrchestratorNode.objects.get(node_id="api-test-1").status == NodeStatus.OFFLINE
    assert events(EventType.NODE_UNREGISTERED)[-1].payload["reason"] == "graceful shutdown"
