"""The SSE stream served by a real uvicorn process, fed by a real Celery worker over Redis."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection

from orchestration import bus
from orchestration.choices import EventType
from orchestration.models import OrchestratorEvent
from runs.choices import TERMINAL_RUN_STATES, RunStatus
from runs.models import AgentRun
from tests.faults.harness import ApiServer
from tests.orchestration.workers import WorkerProcess, private_queue

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

HEARTBEAT_S = 1
STREAM_CAP = 2


def sse_api_server(log: Path, env: dict) -> ApiServer:
    """The API server the stream tests read from (tests.faults.harness.ApiServer, on the
    test database): logs at WARNING into ``log``, 2 s of graceful shutdown for streams."""
    return ApiServer(
        log=log,
        env={"LOG_LEVEL": "WARNING", **env},
        args=("--timeout-graceful-shutdown", "2"),
    )


@dataclass
class Sse:
    id: int | None
    event: str
    data: dict


class SseStream:
    """A blocking SSE reader whose every wait is bounded (heartbeats arrive every second)."""

    def __init__(self, url: str, *, key: str, headers: dict | None = None, params=None):
        self.client = httpx.Client(timeout=httpx.Timeout(10.0, read=5 * HEARTBEAT_S))
        headers = {"Authorization": f"Bearer {key}", **(headers or {})}
        self._context = self.client.stream("GET", url, headers=headers, params=params)
        self.response = self._context.__enter__()
        self.comments: list[str] = []
        if self.response.status_code == 200:
            self._lines = self.response.iter_lines()
            # The stream says it is connected once it is subscribed: events from here on arrive.
            self._block(deadline=time.monotonic() + 10)
            assert "connected" in self.comments, self.comments

    def close(self) -> None:
        self._context.__exit__(None, None, None)
        self.client.close()

    def __enter__(self) -> SseStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _block(self, *, deadline: float) -> Sse | None:
        """The next message: an Sse for an event, None for a comment-only block."""
        fields: dict[str, str] = {}
        comments = []
        for line in self._lines:
            if line == "":
                self.comments.extend(comments)
                if "event" in fields:
                    return Sse(
                        id=int(fields["id"]) if "id" in fields else None,
                        event=fields["event"],
                        data=json.loads(fields["data"]),
                    )
                return None
            if line.startswith(":"):
                comments.append(line[1:].strip())
            else:
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
            if time.monotonic() > deadline:
                break
        raise AssertionError("the stream ended or stalled")

    def next_event(self, timeout: float) -> Sse:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event = self._block(deadline=deadline)
            if event is not None:
                return event
        raise AssertionError(f"no event within {timeout}s")

    def expect_silence(self, seconds: float) -> None:
        """Only heartbeats for this long: nothing repeated, nothing unexpected."""
        deadline = time.monotonic() + seconds
        beats = len([c for c in self.comments if c == "keepalive"])
        while time.monotonic() < deadline:
            event = self._block(deadline=deadline + 5)
            assert event is None, f"unexpected event {event}"
        assert len([c for c in self.comments if c == "keepalive"]) > beats


def _api_server(tmp_path, **env):
    server = sse_api_server(
        tmp_path / "uvicorn.log",
        {
            "SSE_HEARTBEAT_S": str(HEARTBEAT_S),
            "SSE_MAX_CONNECTIONS_PER_KEY": str(STREAM_CAP),
            **env,
        },
    ).start()
    yield server
    server.stop()
    print(f"uvicorn output:\n{server.output()}")  # shown when the test failed


@pytest.fixture
def api_server(transactional_db, tmp_path):
    yield from _api_server(tmp_path)


@pytest.fixture
def unpooled_api_server(transactional_db, tmp_path):
    """Persistent per-thread connections instead of the ASGI pool (config/asgi.py).

    A pool keeps connections open whoever uses them, so only without one does a
    connection left open by a stream show in pg_stat_activity.
    """
    yield from _api_server(tmp_path, DATABASE_POOL_MAX_SIZE="0")


@pytest.fixture
def worker(settings, transactional_db):
    settings.RUN_DEFAULT_QUEUE = private_queue()
    process = WorkerProcess("worker-sse", settings.RUN_DEFAULT_QUEUE).start()
    yield process
    process.stop()


def stream_url(server: ApiServer) -> str:
    return f"{server.url}/api/orchestration/events/stream"


def announce(tenant, seq: int) -> str:
    response = tenant.client.post(
        "/api/orchestrate",
        {"intent": "announce", "mode": "async", "payload": {"seq": seq}},
        format="json",
    )
    assert response.status_code == 202, response.json()
    return response.json()["runId"]


def wait_succeeded(run_id: str, timeout: float = 30.0) -> AgentRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = AgentRun.objects.get(pk=run_id)
        if run.status in TERMINAL_RUN_STATES:
            assert run.status == RunStatus.SUCCESS, (run.error_code, run.error_message)
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish within {timeout}s")


def test_an_event_published_in_a_worker_reaches_an_sse_client_of_another_process(
    tenant_a, make_agent, api_server, worker
):
    assert settings.REDIS_URL, "this test needs Redis (REDIS_URL)"
    make_agent("Announcer", "test-publish", intents=["announce"])
    url = stream_url(api_server)

    # The handler's own events; each run also ends with its run.succeeded event.
    only = {"type": EventType.AGENT_MESSAGE}
    with SseStream(url, key=tenant_a.raw_key, params=only) as stream:
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        run = wait_succeeded(announce(tenant_a, 1))
        first = stream.next_event(timeout=30)
    # The event was written by the worker process, during the run it executed.
    assert run.node_id == "worker-sse"
    assert first.event == EventType.AGENT_MESSAGE
    assert first.data["payload"] == {"seq": 1, "from": "test-publish"}
    assert first.data["run"] == str(run.pk)
    assert first.data["organization"] == str(tenant_a.organization.pk)
    assert first.id == first.data["id"]

    # Disconnected: two more events happen meanwhile.
    missed = [wait_succeeded(announce(tenant_a, seq)) for seq in (2, 3)]
    missed_ids = list(
        OrchestratorEvent.objects.filter(run__in=missed, type=EventType.AGENT_MESSAGE)
        .order_by("id")
        .values_list("id", flat=True)
    )
    assert len(missed_ids) == 2

    # Reconnect with Last-Event-ID (it wins over ?after=, as for a reconnecting EventSource).
    with SseStream(
        url,
        key=tenant_a.raw_key,
        headers={"Last-Event-ID": str(first.id)},
        params={"after": 0, **only},
    ) as stream:
        resumed = [stream.next_event(timeout=10) for _ in range(2)]
        assert [e.id for e in resumed] == missed_ids
        assert [e.data["payload"]["seq"] for e in resumed] == [2, 3]
        stream.expect_silence(2.5 * HEARTBEAT_S)  # nothing repeated, nothing else
        # Still live after the catch-up.
        live_run = wait_succeeded(announce(tenant_a, 4))
        live = stream.next_event(timeout=30)
        assert live.data["run"] == str(live_run.pk)
        assert live.id > resumed[-1].id
        stream.expect_silence(1.5 * HEARTBEAT_S)


def test_a_stream_shows_only_the_callers_events_and_honours_filters(
    tenant_a, tenant_b, make_agent, api_server
):
    agent_a = make_agent("Alpha", "test-sleep", intents=["nap"])
    url = stream_url(api_server)
    with (
        SseStream(url, key=tenant_b.raw_key) as stream_b,
        SseStream(
            url, key=tenant_a.raw_key, params={"type": "agent.message", "agent": "alpha"}
        ) as filtered_a,
    ):
        bus.publish(EventType.NODE_REGISTERED, {"node": "n1"}, node="n1")  # fleet: neither
        bus.publish(EventType.AGENT_MESSAGE, {"n": 1}, organization=tenant_a.organization)
        bus.publish(
            EventType.RATE_LIMITED, {"n": 2}, organization=tenant_a.organization, agent=agent_a
        )
        wanted = bus.publish(
            EventType.AGENT_MESSAGE, {"n": 3}, organization=tenant_a.organization, agent=agent_a
        )
        own_b = bus.publish(EventType.AGENT_MESSAGE, {"n": 4}, organization=tenant_b.organization)

        assert filtered_a.next_event(timeout=10).id == wanted.pk
        assert stream_b.next_event(timeout=10).id == own_b.pk
        filtered_a.expect_silence(1.5 * HEARTBEAT_S)
        stream_b.expect_silence(1.5 * HEARTBEAT_S)


def test_stream_errors_use_the_envelope(tenant_a, api_server):
    url = stream_url(api_server)
    anonymous = httpx.get(url, timeout=5)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "UNAUTHENTICATED"

    bad_key = httpx.get(url, headers={"Authorization": "Bearer acp_nope_nope"}, timeout=5)
    assert bad_key.status_code == 401

    auth = {"Authorization": f"Bearer {tenant_a.raw_key}"}
    bad_cursor = httpx.get(url, headers={**auth, "Last-Event-ID": "soon"}, timeout=5)
    assert bad_cursor.status_code == 400
    assert "Last-Event-ID" in bad_cursor.json()["error"]["details"]
    bad_type = httpx.get(url, headers=auth, params={"type": "run.exploded"}, timeout=5)
    assert bad_type.status_code == 400
    assert bad_type.json()["error"]["code"] == "INVALID_REQUEST"


def test_open_streams_are_capped_per_key(tenant_a, tenant_b, api_server):
    url = stream_url(api_server)
    streams = [SseStream(url, key=tenant_a.raw_key) for _ in range(STREAM_CAP)]
    try:
        assert all(s.response.status_code == 200 for s in streams)
        refused = SseStream(url, key=tenant_a.raw_key)
        assert refused.response.status_code == 429
        body = json.loads(refused.response.read())
        refused.close()
        assert body["success"] is False
        assert body["error"]["code"] == "RATE_LIMITED"
        assert body["error"]["details"] == {"limit": STREAM_CAP}

        # Another key has its own allowance.
        with SseStream(url, key=tenant_b.raw_key) as other:
            assert other.response.status_code == 200

        # Closing a stream frees its slot (the server notices the disconnect).
        streams.pop().close()
        deadline = time.monotonic() + 10
        while True:
            again = SseStream(url, key=tenant_a.raw_key)
            if again.response.status_code == 200:
                streams.append(again)
                break
            again.close()
            assert time.monotonic() < deadline, "the closed stream's slot was never freed"
            time.sleep(0.2)
    finally:
        for stream in streams:
            stream.close()


def test_idle_streams_hold_no_database_connection(tenant_a, tenant_b, unpooled_api_server):
    api_server = unpooled_api_server
    url = stream_url(api_server)
    with (
        SseStream(url, key=tenant_a.raw_key, params={"after": 0}) as first,
        SseStream(url, key=tenant_a.raw_key) as second,
        SseStream(url, key=tenant_b.raw_key) as third,
    ):
        for stream in (first, second, third):
            stream.expect_silence(1.5 * HEARTBEAT_S)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                [api_server.application_name],
            )
            assert cursor.fetchone()[0] == 0
