"""The bus: agents announced on it, messages delivered as runs, in-process live delivery."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import pytest
from django.db import connection

from agents.choices import AgentStatus
from orchestration import bus
from orchestration.bus.delivery import BUS_PRINCIPAL_KEY, broadcast, send
from orchestration.bus.selectors import EventScope
from orchestration.bus.stream import StreamCursor, event_stream
from orchestration.choices import EventType
from orchestration.errors import OrchestrationError
from orchestration.models import OrchestratorEvent
from runs.choices import RunMode, RunStatus
from runs.models import AgentRun

pytestmark = pytest.mark.django_db


def test_register_and_unregister_announce_the_agent(tenant_a, make_agent, settings):
    agent = make_agent("Scribe", "test-sleep", intents=["summarize", "translate"])
    registered = bus.register_agent(agent)
    unregistered = bus.unregister_agent(agent, node="node-7", reason="shutdown")

    assert registered.type == EventType.AGENT_REGISTERED
    assert registered.organization == tenant_a.organization
    assert registered.agent == agent
    assert registered.node_id == settings.ORCHESTRATOR_NODE_ID
    assert registered.payload["capabilities"] == ["summarize", "translate"]
    assert registered.payload["handler"] == "test-sleep"
    assert unregistered.type == EventType.AGENT_UNREGISTERED
    assert unregistered.node_id == "node-7"
    assert unregistered.payload["reason"] == "shutdown"


def test_publish_refuses_a_type_outside_the_closed_list():
    with pytest.raises(ValueError):
        bus.publish("run.exploded", {})


def test_a_broadcast_runs_every_active_agent_with_the_capability_and_no_other(
    tenant_a, tenant_b, make_agent
):
    alpha = make_agent("Alpha", "test-sleep", intents=["digest"])
    beta = make_agent("Beta", "test-sleep", intents=["digest", "other"])
    make_agent("Paused", "test-sleep", intents=["digest"], status=AgentStatus.PAUSED)
    make_agent("Draft", "test-sleep", intents=["digest"], status=AgentStatus.DRAFT)
    make_agent("Disabled", "test-sleep", intents=["digest"], status=AgentStatus.DISABLED)
    make_agent("Elsewhere", "test-sleep", intents=["other"])
    make_agent("Foreign", "test-sleep", intents=["digest"], tenant=tenant_b)

    runs = broadcast(tenant_a.organization, "digest", {"day": "monday"}, source="test")

    assert sorted(run.agent_id for run in runs) == sorted([alpha.pk, beta.pk])
    persisted = AgentRun.objects.filter(pk__in=[run.pk for run in runs])
    assert persisted.count() == 2
    for run in persisted:
        assert run.organization == tenant_a.organization
        assert run.intent == "digest"
        assert run.input == {"day": "monday"}
        assert run.status == RunStatus.PENDING
        assert run.meta["mode"] == RunMode.ASYNC
        assert run.meta["principal"] == BUS_PRINCIPAL_KEY
    # Nothing anywhere else: not the paused, draft, disabled, other-capability or foreign ones.
    assert AgentRun.objects.count() == 2

    event = OrchestratorEvent.objects.get(type=EventType.AGENT_MESSAGE)
    assert event.organization == tenant_a.organization
    assert sorted(event.payload["runs"]) == sorted(str(run.pk) for run in runs)
    assert event.payload["agents"] == ["alpha", "beta"]
    assert event.payload["refused"] == []
    assert event.payload["messageType"] == "digest"
    # Each run names the message that caused it.
    message_id = event.payload["messageId"]
    assert {run.meta["context"]["bus"]["messageId"] for run in persisted} == {message_id}


def test_a_broadcast_is_policed_like_any_request(tenant_a, make_agent):
    make_agent("Limited", "test-sleep", intents=["digest"], config={"rate_limit": {"limit": 1}})
    make_agent("Ghost", "no-such-handler", intents=["digest"])

    first = broadcast(tenant_a.organization, "digest", {})
    second = broadcast(tenant_a.organization, "digest", {})

    assert [run.agent.slug for run in first] == ["limited"]
    assert second == []
    refusals = OrchestratorEvent.objects.filter(type=EventType.AGENT_MESSAGE).order_by("id")
    assert [r["code"] for r in refusals[0].payload["refused"]] == ["AGENT_NOT_REGISTERED"]
    assert sorted(r["code"] for r in refusals[1].payload["refused"]) == [
        "AGENT_NOT_REGISTERED",
        "RATE_LIMITED",
    ]


def test_a_broadcast_nobody_serves_is_recorded_with_no_runs(tenant_a):
    assert broadcast(tenant_a.organization, "nobody-listens", {"x": 1}) == []
    event = OrchestratorEvent.objects.get(type=EventType.AGENT_MESSAGE)
    assert event.payload["runs"] == []


def test_send_delivers_to_one_agent_and_links_the_event(tenant_a, make_agent):
    alpha = make_agent("Alpha", "test-sleep", intents=["digest"])
    make_agent("Beta", "test-sleep", intents=["digest"])
    run = send(alpha, "digest", {"n": 1})

    assert run.agent == alpha
    assert AgentRun.objects.count() == 1
    event = OrchestratorEvent.objects.get(type=EventType.AGENT_MESSAGE)
    assert event.run_id == run.pk
    assert event.agent == alpha
    assert event.payload["runs"] == [str(run.pk)]


def test_send_to_a_paused_agent_is_refused(tenant_a, make_agent):
    paused = make_agent("Paused", "test-sleep", intents=["digest"], status=AgentStatus.PAUSED)
    with pytest.raises(OrchestrationError) as refused:
        send(paused, "digest", {})
    assert refused.value.code == "AGENT_DISABLED"
    assert AgentRun.objects.count() == 0
    event = OrchestratorEvent.objects.get(type=EventType.AGENT_MESSAGE)
    assert event.payload["refused"][0]["code"] == "AGENT_DISABLED"


def test_embedded_mode_delivers_committed_events_in_process(
    tenant_a, settings, django_capture_on_commit_callbacks
):
    settings.REDIS_URL = None
    heard = []
    bus.local_listen(heard.append)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            event = bus.publish(
                EventType.AGENT_MESSAGE, {"n": 1}, organization=tenant_a.organization
            )
            assert heard == []  # not before the commit
    finally:
        bus.local_unlisten(heard.append)
    assert [wire["id"] for wire in heard] == [event.pk]
    assert heard[0]["organization"] == str(tenant_a.organization.pk)


def test_the_cursor_sends_each_event_once_and_keeps_its_resume_point():
    cursor = StreamCursor(after=4)
    assert cursor.admit({"id": 5, "type": "agent.message"}).startswith("id: 5\n")
    assert cursor.admit({"id": 7, "type": "agent.message"}).startswith("id: 7\n")
    # Committed after 7 was sent: delivered, without moving Last-Event-ID back to 6.
    late = cursor.admit({"id": 6, "type": "agent.message"})
    assert late.startswith("event: agent.message\n")
    assert "id:" not in late.split("data:")[0]
    assert cursor.admit({"id": 7, "type": "agent.message"}) is None  # a duplicate
    assert cursor.admit({"id": 4, "type": "agent.message"}) is None  # before the cursor
    assert cursor.last == 7


def test_the_scope_decides_alike_for_rows_and_live_messages(tenant_a, tenant_b):
    fleet = bus.publish(EventType.NODE_REGISTERED, {}, node="n1")
    own = bus.publish(EventType.AGENT_MESSAGE, {}, organization=tenant_a.organization)
    foreign = bus.publish(EventType.AGENT_MESSAGE, {}, organization=tenant_b.organization)
    scopes = [
        EventScope(organization_id=str(tenant_a.organization.pk)),
        EventScope(organization_id=str(tenant_a.organization.pk), include_fleet=True),
        EventScope(organization_id=None, include_fleet=True),
        EventScope(organization_id=None, type=EventType.NODE_REGISTERED),
    ]
    for scope in scopes:
        in_rows = set(scope.queryset().values_list("id", flat=True))
        live = {e.pk for e in (fleet, own, foreign) if scope.matches(bus.event_wire(e))}
        assert in_rows == live, scope


@pytest.mark.django_db(transaction=True)
def test_an_embedded_stream_catches_up_then_hears_live_events(tenant_a, tenant_b, settings):
    settings.REDIS_URL = None
    before = bus.publish(EventType.AGENT_MESSAGE, {"n": 0}, organization=tenant_a.organization)
    scope = EventScope(organization_id=str(tenant_a.organization.pk))

    def publish_later():
        bus.publish(EventType.AGENT_MESSAGE, {"n": "b"}, organization=tenant_b.organization)
        bus.publish(EventType.AGENT_MESSAGE, {"n": 1}, organization=tenant_a.organization)
        connection.close()

    async def read(count: int) -> list[str]:
        stream = event_stream(scope=scope, after=0, heartbeat_s=60, poll_s=60)
        chunks = [await anext(stream)]  # connected, subscribed
        chunks.append(await anext(stream))  # the catch-up
        thread = threading.Thread(target=publish_later)
        thread.start()
        while len(chunks) < count:
            chunks.append(await asyncio.wait_for(anext(stream), 10))
        thread.join(10)
        await stream.aclose()
        return chunks

    chunks = asyncio.run(read(3))
    assert chunks[0].startswith("retry:")
    assert chunks[1].startswith(f"id: {before.pk}\n")
    live = OrchestratorEvent.objects.get(payload__n=1)
    assert chunks[2].startswith(f"id: {live.pk}\nevent: agent.message\n")


def _subscribed(settings):
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(settings.EVENTS_CHANNEL)
    pubsub.get_message(timeout=1)  # the subscribe confirmation
    return client, pubsub


def test_committed_events_reach_redis_in_commit_order_without_the_committer_waiting(
    tenant_a, settings, django_capture_on_commit_callbacks
):
    """The committing thread only queues its events; the process's sender thread sends
    what queued up meanwhile in one pipeline, in order, and flush() waits for it."""
    client, pubsub = _subscribed(settings)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            events = [
                bus.publish(EventType.AGENT_MESSAGE, {"n": n}, organization=tenant_a.organization)
                for n in range(200)
            ]
        assert bus.broadcast_flush(5.0)
        heard = []
        while len(heard) < len(events):
            message = pubsub.get_message(timeout=2)
            assert message is not None, f"heard {len(heard)} of {len(events)}"
            heard.append(json.loads(message["data"]))
    finally:
        pubsub.close()
        client.close()
    assert [wire["id"] for wire in heard] == [event.pk for event in events]
    assert [wire["payload"]["n"] for wire in heard] == list(range(200))


def test_an_unreachable_redis_drops_live_delivery_not_the_event(
    tenant_a, settings, django_capture_on_commit_callbacks, caplog, monkeypatch
):
    """Live delivery is best effort: with Redis unreachable the batch is logged and
    dropped, the rows stay, and nothing waits on it but the sender thread."""
    import redis

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(
        bus, "_redis", redis.Redis(port=port, socket_timeout=0.2, socket_connect_timeout=0.2)
    )
    with django_capture_on_commit_callbacks(execute=True):
        event = bus.publish(EventType.AGENT_MESSAGE, {"n": 1}, organization=tenant_a.organization)
    assert bus.broadcast_flush(5.0)
    assert OrchestratorEvent.objects.filter(pk=event.pk).exists()
    assert any("not broadcast" in record.getMessage() for record in caplog.records)


def test_the_send_queue_is_bounded(monkeypatch):
    sender = bus._Sender()
    monkeypatch.setattr(sender, "MAX_QUEUED", 3)
    gate = threading.Event()
    sent: list[list[int]] = []

    def slow_send(batch):
        gate.wait(5)
        sent.append([wire["id"] for wire, _ in batch])

    monkeypatch.setattr(bus, "_send", slow_send)
    for n in range(10):
        sender.submit(({"id": n, "type": EventType.AGENT_MESSAGE}, None))
    gate.set()
    assert sender.flush(5.0)
    delivered = [event_id for batch in sent for event_id in batch]
    # At most one batch in flight (taken from the queue) plus MAX_QUEUED waiting; the rest
    # are dropped and counted, and what is sent keeps its order.
    assert 3 <= len(delivered) <= 6
    assert delivered == sorted(delivered) and delivered[0] == 0
    assert sender.dropped == 10 - len(delivered)
