"""Every run's end is one event on the bus, written with the outcome; run_wait hears it.

run.succeeded / run.failed / run.cancelled are recorded by the statement that ends the run
(fenced on status and attempt), broadcast on Redis after commit together with the run's
completion signal (runs.services.run_wait). A stale completion records no terminal event.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis
from django.conf import settings
from django.db import connection

from orchestration.choices import EventType
from orchestration.models import OrchestratorEvent
from runs import services as run_services
from runs.choices import RunStatus, StepStatus
from runs.models import AgentRun
from tests.orchestration.workers import WorkerProcess, private_queue

TERMINAL = [EventType.RUN_SUCCEEDED, EventType.RUN_FAILED, EventType.RUN_CANCELLED]


def terminal_events(run_id) -> list[OrchestratorEvent]:
    return list(OrchestratorEvent.objects.filter(run_id=run_id, type__in=TERMINAL))


@pytest.fixture
def subscriber():
    """A live subscriber on the bus's Redis channel, as another process would be."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(settings.EVENTS_CHANNEL)
    pubsub.get_message(timeout=1)  # the subscribe confirmation

    def received(run_id, timeout: float = 5.0) -> list[dict]:
        found, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.1)
            if message is None:
                if found:
                    break
                continue
            wire = json.loads(message["data"])
            if wire["run"] == str(run_id):
                found.append(wire)
        return found

    yield received
    pubsub.close()
    client.close()


@pytest.mark.django_db
def test_a_sync_run_publishes_one_succeeded_event(
    tenant_a, make_agent, subscriber, django_capture_on_commit_callbacks
):
    agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
    with django_capture_on_commit_callbacks(execute=True):
        response = tenant_a.client.post("/api/orchestrate", {"intent": "nap"}, format="json")
    assert response.status_code == 200
    run = AgentRun.objects.get(pk=response.json()["runId"])
    (event,) = terminal_events(run.pk)
    assert event.type == EventType.RUN_SUCCEEDED
    assert (event.organization_id, event.agent_id, event.node_id) == (
        tenant_a.organization.pk,
        agent.pk,
        run.node_id,
    )
    assert event.payload == {
        "status": RunStatus.SUCCESS,
        "errorCode": None,
        "durationMs": run.duration_ms,
        "attempt": run.attempt,
        "intent": "nap",
    }
    (wire,) = subscriber(run.pk)
    assert (wire["id"], wire["type"], wire["payload"]) == (event.pk, event.type, event.payload)
    assert wire["node"] == run.node_id and wire["agent"] == str(agent.pk)
    # The completion signal went out with it: the run's row as the finish wrote it.
    (signal,) = redis.Redis.from_url(settings.REDIS_URL).lrange(
        run_services.run_done_key(run.pk), 0, -1
    )
    row = json.loads(signal)
    assert (row["id"], row["status"], row["attempt"]) == (str(run.pk), "SUCCESS", 1)


@pytest.mark.django_db
def test_a_failed_sync_run_publishes_one_failed_event(tenant_a, make_agent):
    make_agent("Failer", "test-fail", intents=["fail"])
    response = tenant_a.client.post("/api/orchestrate", {"intent": "fail"}, format="json")
    assert response.json()["success"] is False
    (event,) = terminal_events(response.json()["runId"])
    assert event.type == EventType.RUN_FAILED
    assert event.payload["status"] == RunStatus.FAILED
    assert event.payload["errorCode"] == "AGENT_EXECUTION_FAILED"


@pytest.mark.django_db
def test_cancelling_a_pending_run_publishes_one_cancelled_event(
    tenant_a, make_agent, subscriber, django_capture_on_commit_callbacks
):
    make_agent("Sleeper", "test-sleep", intents=["nap"])
    with django_capture_on_commit_callbacks(execute=False):  # never dispatched: stays PENDING
        accepted = tenant_a.client.post(
            "/api/orchestrate", {"intent": "nap", "mode": "async"}, format="json"
        )
    run_id = accepted.json()["runId"]
    assert not terminal_events(run_id)
    with django_capture_on_commit_callbacks(execute=True):
        response = tenant_a.client.post(f"/api/runs/{run_id}/cancel/")
    assert response.status_code == 200
    assert response.json()["status"] == RunStatus.CANCELLED
    (event,) = terminal_events(run_id)
    assert event.type == EventType.RUN_CANCELLED
    assert event.payload["errorCode"] == "CANCELLED"
    assert [w["type"] for w in subscriber(run_id)] == [EventType.RUN_CANCELLED]
    # A second cancel changes nothing and publishes nothing.
    with django_capture_on_commit_callbacks(execute=True):
        again = tenant_a.client.post(f"/api/runs/{run_id}/cancel/")
    assert again.json()["status"] == RunStatus.CANCELLED
    assert len(terminal_events(run_id)) == 1


@pytest.mark.django_db
def test_a_stale_finish_publishes_no_terminal_event(tenant_a, make_agent):
    from tests.factories import RunFactory

    run = RunFactory(agent=make_agent("Sleeper", "test-sleep"))
    assert run_services.run_claim(run=run, node_id="n1", lease_seconds=30)
    AgentRun.objects.filter(pk=run.pk).update(attempt=run.attempt + 1, node_id="n2")
    written = run_services.run_finish(
        run=run,
        outcome=run_services.RunOutcome(status=RunStatus.SUCCESS, output={}),
        metrics={},
        meta={},
    )
    assert written is False
    assert not terminal_events(run.pk)
    assert not OrchestratorEvent.objects.filter(run_id=run.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_a_completion_after_reassignment_publishes_stale_completion_only(tenant_a, make_agent):
    """The handler's run is taken away mid-run: its result is fenced off, no run.* end."""
    from agents.handlers.registry import registry
    from orchestration.services.execution import run_execute
    from tests.factories import RunFactory
    from tests.orchestration.handlers import SleepHandler

    class ReassignedMidRun(SleepHandler):
        key = "test-reassigned-mid-run"

        def handle(self, request, ctx):
            output = super().handle(request, ctx)
            try:  # another node now owns the run (a newer attempt)
                AgentRun.objects.filter(pk=request.run_id).update(
                    attempt=request.attempt + 1, node_id="other-node"
                )
            finally:
                connection.close()  # this handler thread's own connection
            return output

    registry.register(ReassignedMidRun)
    try:
        agent = make_agent("Mid", "test-reassigned-mid-run", intents=["mid"])
        run = RunFactory(agent=agent)
        assert run_execute(run=run, node_id="this-node")
    finally:
        registry.unregister("test-reassigned-mid-run")
    assert not terminal_events(run.pk)
    (stale,) = OrchestratorEvent.objects.filter(run_id=run.pk)
    assert stale.type == EventType.RUN_STALE_COMPLETION
    assert stale.payload["currentNode"] == "other-node"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_an_async_run_on_a_worker_publishes_one_event_and_wakes_run_wait(
    tenant_a, make_agent, settings, subscriber
):
    settings.RUN_DEFAULT_QUEUE = private_queue()
    worker = WorkerProcess("events-worker", settings.RUN_DEFAULT_QUEUE).start()
    try:
        make_agent("Sleeper", "test-sleep", intents=["nap"])
        response = tenant_a.client.post(
            "/api/orchestrate",
            {"intent": "nap", "mode": "async", "payload": {"sleep_ms": 50}},
            format="json",
        )
        assert response.status_code == 202
        run_id = response.json()["runId"]
        run = run_services.run_wait(run_id, timeout=30)
        assert run.status == RunStatus.SUCCESS
        assert run.node_id == "events-worker"
        (event,) = terminal_events(run_id)
        assert event.type == EventType.RUN_SUCCEEDED
        assert event.node_id == "events-worker"
        assert event.payload["attempt"] == 1
        assert [w["id"] for w in subscriber(run_id)] == [event.pk]
    finally:
        worker.stop()


# --- run_wait -----------------------------------------------------------------------------


def _finish_later(run: AgentRun, delay_s: float) -> threading.Thread:
    def finish():
        time.sleep(delay_s)
        try:
            run_services.run_finish(
                run=run,
                outcome=run_services.RunOutcome(status=RunStatus.SUCCESS, output={"late": True}),
                metrics={},
                meta={},
            )
        finally:
            connection.close()

    thread = threading.Thread(target=finish)
    thread.start()
    return thread


@pytest.mark.django_db(transaction=True)
def test_run_wait_is_woken_by_the_push_not_by_polling(
    tenant_a, make_agent, django_assert_num_queries
):
    from tests.factories import RunFactory

    run = RunFactory(agent=make_agent("Sleeper", "test-sleep"))
    assert run_services.run_claim(run=run, node_id="n1", lease_seconds=30)
    thread = _finish_later(run, 0.3)
    # One read before blocking, none after the wake-up (the signal carries the ended row):
    # nothing polls the row meanwhile.
    with django_assert_num_queries(1):
        waited = run_services.run_wait(run.pk, timeout=20)
    thread.join()
    assert waited.status == RunStatus.SUCCESS
    assert waited.output == {"late": True}
    # Later waiters (any number) find the signal at once.
    assert run_services.run_wait(run.pk, timeout=0).status == RunStatus.SUCCESS


def _fields(run: AgentRun) -> dict:
    return {f.attname: getattr(run, f.attname) for f in AgentRun._meta.concrete_fields}


@pytest.mark.django_db(transaction=True)
def test_run_wait_given_the_run_holds_the_ended_row_without_reading_it(
    tenant_a, make_agent, django_assert_num_queries
):
    from tests.factories import RunFactory

    run = RunFactory(
        agent=make_agent("Sleeper", "test-sleep"),
        input={"text": "x", "nested": {"n": [1, 2.5, None]}},
        meta={"mode": "async", "context": {"k": "v"}},
    )
    assert run_services.run_claim(run=run, node_id="n1", lease_seconds=30)
    thread = _finish_later(run, 0.3)
    # The caller holds the run (as orchestrate() returns it): no read before the wait, and
    # the completion signal carries the row the finish wrote: no read after it either.
    with django_assert_num_queries(0):
        waited = run_services.run_wait(run, timeout=20)
        # The agent and organization the caller's instance held are kept.
        assert waited.agent.pk == run.agent_id and waited.organization.pk == run.organization_id
    thread.join()
    assert waited is not run and waited.status == RunStatus.SUCCESS
    assert waited.output == {"late": True}
    # Field for field the row in the database, as the ORM reads it.
    assert _fields(waited) == _fields(AgentRun.objects.get(pk=run.pk))
    assert waited._state.adding is False and waited._state.db == "default"


@pytest.mark.django_db(transaction=True)
def test_a_row_too_big_for_the_signal_is_read_once(
    tenant_a, make_agent, monkeypatch, django_assert_num_queries
):
    """An output past RUN_DONE_SIGNAL_MAX_BYTES: the signal is the status, the row is read."""
    from tests.factories import RunFactory

    monkeypatch.setattr(run_services, "RUN_DONE_SIGNAL_MAX_BYTES", 200)
    run = RunFactory(agent=make_agent("Sleeper", "test-sleep"), meta={"mode": "async"})
    assert run_services.run_claim(run=run, node_id="n1", lease_seconds=30)
    thread = _finish_later(run, 0.3)
    with django_assert_num_queries(1):
        waited = run_services.run_wait(run, timeout=20)
    thread.join()
    client = redis.Redis.from_url(settings.REDIS_URL)
    assert client.lrange(run_services.run_done_key(run.pk), 0, -1) == [b"SUCCESS"]
    assert _fields(waited) == _fields(AgentRun.objects.get(pk=run.pk))


@pytest.mark.django_db(transaction=True)
def test_an_async_run_s_signal_is_sent_before_its_finish_returns(tenant_a, make_agent):
    """No hand-over to the sender thread for an async run's end: once run_finish returned,
    the signal is in Redis (a sync run's may still be queued)."""
    from tests.factories import RunFactory

    run = RunFactory(agent=make_agent("Sleeper", "test-sleep"), meta={"mode": "async"})
    assert run_services.run_claim(run=run, node_id="n1", lease_seconds=30)
    assert run_services.run_finish(
        run=run,
        outcome=run_services.RunOutcome(status=RunStatus.SUCCESS, output={"n": 1}),
        metrics={},
        meta={"mode": "async"},
    )
    client = redis.Redis.from_url(settings.REDIS_URL)
    (signal,) = client.lrange(run_services.run_done_key(run.pk), 0, -1)
    row = json.loads(signal)
    assert row["id"] == str(run.pk) and row["status"] == RunStatus.SUCCESS
    assert row["output"] == {"n": 1}


def test_a_bare_status_signal_is_not_taken_for_the_run():
    """What an earlier release pushes (the status alone), or another run's row, is no run:
    run_wait reads the row then."""
    run_id = "0195a4a4-0000-7000-8000-000000000001"
    assert run_services._run_from_signal(b"SUCCESS", run_id, None) is None
    assert run_services._run_from_signal(b'{"id": "other"}', run_id, None) is None
    assert run_services._run_from_signal(b"{not json", run_id, None) is None
    assert run_services._run_from_signal(b'{"id": "%s"}' % run_id.encode(), run_id, None) is None


def test_events_queued_before_an_immediate_send_go_first(monkeypatch):
    """submit(now=True) sends from the caller's thread only when nothing waits before it."""
    from orchestration import bus

    sent: list[tuple[list, str]] = []
    release = threading.Event()

    def recording_send(batch):
        sent.append(([wire["id"] for wire, _ in batch], threading.current_thread().name))
        release.wait(5)

    monkeypatch.setattr(bus, "_send", recording_send)
    sender = bus._Sender()
    sender.submit(({"id": 1}, None))  # the sender thread takes it and is held in _send
    sender.submit(({"id": 2}, None))
    sender.submit(({"id": 3}, "row"), now=True)  # queued behind them: not sent here
    release.set()
    assert sender.flush(5)
    assert [ids for ids, _ in sent] in ([[1], [2, 3]], [[1, 2, 3]])
    assert {thread for _, thread in sent} == {"event-sender"}
    sender.submit(({"id": 4}, "row"), now=True)  # nothing waits: sent by this thread
    assert sent[-1] == ([4], threading.current_thread().name)


def test_a_failed_immediate_send_leaves_the_next_ones_to_the_sender_thread(monkeypatch):
    """Redis down or hung: the run's own thread pays for one failed send, not for each."""
    from orchestration import bus

    sent: list[tuple[int, str]] = []
    monkeypatch.setattr(
        bus,
        "_send",
        lambda batch: sent.append((batch[0][0]["id"], threading.current_thread().name)),
    )  # returns None: refused
    sender = bus._Sender()
    sender.submit(({"id": 1}, "row"), now=True)
    sender.submit(({"id": 2}, "row"), now=True)
    assert sender.flush(5)
    assert sent == [(1, threading.current_thread().name), (2, "event-sender")]
    monkeypatch.setattr(sender, "_inline_after", 0.0)  # the back-off is over
    sender.submit(({"id": 3}, "row"), now=True)
    assert sent[-1] == (3, threading.current_thread().name)


@pytest.mark.django_db(transaction=True)
def test_run_wait_returns_the_active_run_at_its_timeout(tenant_a, make_agent):
    from tests.factories import RunFactory

    run = RunFactory(agent=make_agent("Sleeper", "test-sleep"))
    waited = run_services.run_wait(run.pk, timeout=0.2)
    assert waited.status == RunStatus.PENDING
    assert run_services.run_wait("00000000-0000-0000-0000-000000000000", timeout=0.1) is None


@pytest.mark.django_db(transaction=True)
def test_run_wait_sees_an_end_without_a_push(tenant_a, make_agent, monkeypatch):
    """A run ended by code that does not push (e.g. the reaper) is seen at the next re-read."""
    from tests.factories import RunFactory

    monkeypatch.setattr(run_services, "RUN_WAIT_RECHECK_S", 0.1)
    run = RunFactory(agent=make_agent("Sleeper", "test-sleep"))

    def end_quietly():
        time.sleep(0.3)
        try:
            AgentRun.objects.filter(pk=run.pk).update(status=RunStatus.FAILED)
        finally:
            connection.close()

    thread = threading.Thread(target=end_quietly)
    thread.start()
    waited = run_services.run_wait(run.pk, timeout=20)
    thread.join()
    assert waited.status == RunStatus.FAILED


@pytest.mark.django_db(transaction=True)
def test_run_wait_polls_the_row_without_redis(tenant_a, make_agent, settings):
    from tests.factories import RunFactory

    settings.REDIS_URL = None  # embedded: no push, the row is polled
    run = RunFactory(agent=make_agent("Sleeper", "test-sleep"))
    assert run_services.run_claim(run=run, node_id="n1", lease_seconds=30)
    thread = _finish_later(run, 0.2)
    waited = run_services.run_wait(run.pk, timeout=20)
    thread.join()
    assert waited.status == RunStatus.SUCCESS


# --- the one-statement finish ---------------------------------------------------------------


@pytest.mark.django_db
def test_the_finish_writes_the_records_with_the_outcome(tenant_a, make_agent):
    from runs.models import AgentRunMetric, RunStep, ToolExecution

    make_agent("Sleeper", "test-sleep", intents=["nap"])
    response = tenant_a.client.post(
        "/api/orchestrate", {"intent": "nap", "payload": {"sleep_ms": 1}}, format="json"
    )
    run = AgentRun.objects.get(pk=response.json()["runId"])
    (step,) = RunStep.objects.filter(run=run)
    assert (step.name, step.status, step.payload, step.result) == (
        "sleep",
        StepStatus.SUCCESS,
        {"ms": 1},
        {"ok": True},
    )
    assert step.started_at <= step.completed_at
    (call,) = ToolExecution.objects.filter(run=run)
    assert (call.tool.slug, call.call_id, call.input, call.output) == (
        "clock",
        "sleep",
        {"ms": 1},
        {"slept": 1},
    )
    names = set(AgentRunMetric.objects.filter(run=run).values_list("name", flat=True))
    assert {"tokens_in", "latency_ms", "attempts", "retries"} <= names
    assert AgentRunMetric.objects.get(run=run, name="tokens_in").metadata == {"source": "test"}


@pytest.mark.django_db
def test_a_tool_deleted_since_this_process_saw_it_is_recreated(tenant_a, make_agent):
    from agents.models import Tool
    from runs.models import ToolExecution

    make_agent("Sleeper", "test-sleep", intents=["nap"])
    first = tenant_a.client.post("/api/orchestrate", {"intent": "nap"}, format="json").json()
    # The tool "clock" is now known to this process; an admin removes it.
    ToolExecution.objects.filter(run_id=first["runId"]).delete()
    Tool.objects.filter(organization=tenant_a.organization, slug="clock").delete()
    second = tenant_a.client.post("/api/orchestrate", {"intent": "nap"}, format="json").json()
    assert second["success"] is True
    (call,) = ToolExecution.objects.filter(run_id=second["runId"])
    assert call.tool.slug == "clock" and call.output == {"slept": 0}


@pytest.mark.django_db(transaction=True)
def test_a_success_racing_a_cancellation_ends_cancelled_with_one_event(tenant_a, make_agent):
    """The cancel request lands while the handler finishes: the success is fenced off."""
    from agents.handlers.registry import registry
    from tests.orchestration.handlers import SleepHandler

    class CancelledMidRun(SleepHandler):
        key = "test-cancelled-mid-run"

        def handle(self, request, ctx):
            output = super().handle(request, ctx)
            try:  # an operator cancels the RUNNING run meanwhile
                run_services.run_cancel(run=AgentRun.objects.get(pk=request.run_id))
            finally:
                connection.close()  # this handler thread's own connection
            return output

    registry.register(CancelledMidRun)
    try:
        make_agent("Mid", "test-cancelled-mid-run", intents=["mid"])
        response = tenant_a.client.post("/api/orchestrate", {"intent": "mid"}, format="json")
    finally:
        registry.unregister("test-cancelled-mid-run")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "RUN_CANCELLED"
    run = AgentRun.objects.get(pk=response.json()["runId"])
    assert (run.status, run.output) == (RunStatus.CANCELLED, None)
    assert [e.type for e in terminal_events(run.pk)] == [EventType.RUN_CANCELLED]
