"""S4: resource limits. Bodies over the size limit answer 413, orchestrate refuses deep
or large payloads with 400 INVALID_REQUEST (never a 500), page sizes are capped, and open
event streams are capped per key (against the real ASGI server)."""

from __future__ import annotations

import json

import pytest

from runs.models import AgentRun
from tests.factories import RunFactory
from tests.faults.abuse import ScenarioParts
from tests.faults.scale import pick
from tests.orchestration.test_events_stream import SseStream, sse_api_server

pytestmark = [pytest.mark.faults]


@pytest.fixture(scope="module")
def s4():
    parts = ScenarioParts.of("S4", "Resource limits")
    yield parts
    parts.record()


def nested(depth: int) -> dict:
    """Objects and arrays, depth levels deep, the outermost an object."""
    value: dict | list = {"leaf": True}
    for level in range(depth - 1):
        value = {"n": value} if (depth - 2 - level) % 2 == 0 else [value]
    assert isinstance(value, dict)
    return value


def orchestrate(tenant, body):
    return tenant.client.post("/api/orchestrate", body, format="json")


@pytest.mark.django_db
def test_s4_body_size_limit_answers_413_in_the_envelope(s4, tenant_a, make_agent, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024
    make_agent("Napper", "test-sleep", intents=["nap"])
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    big = {"intent": "nap", "payload": {"text": "x" * (limit + 1)}}
    with s4.part("body_size") as figures:
        answers = {
            "orchestrate": orchestrate(tenant_a, big),
            "agents": tenant_a.client.post(
                "/api/agents/", {"name": "x" * (limit + 1)}, format="json"
            ),
            "runs_cancel": tenant_a.client.post(
                "/api/runs/00000000-0000-0000-0000-000000000000/cancel/",
                {"pad": "x" * (limit + 1)},
                format="json",
            ),
        }
        under = orchestrate(tenant_a, {"intent": "nap", "payload": {"text": "x" * (limit // 2)}})
        figures["limit_bytes"] = limit
        figures["over_limit_answers"] = {k: r.status_code for k, r in answers.items()}
        figures["under_limit_answer"] = under.status_code
        runs_before = AgentRun.objects.count()
        for response in answers.values():
            assert response.status_code == 413
            body = response.json()
            assert body["success"] is False
            assert body["error"]["code"] == "PAYLOAD_TOO_LARGE"
        assert answers["orchestrate"].json()["status"] == "failed"
        assert under.status_code == 200
        assert AgentRun.objects.count() == runs_before  # nothing stored for refused bodies


@pytest.mark.django_db
def test_s4_orchestrate_refuses_deep_and_large_payloads(s4, tenant_a, make_agent, settings):
    settings.ORCHESTRATE_PAYLOAD_MAX_BYTES = 16 * 1024
    make_agent("Napper", "test-sleep", intents=["nap"])
    max_depth = settings.API_JSON_MAX_DEPTH
    with s4.part("orchestrate_payload") as figures:
        runs_before = AgentRun.objects.count()
        at_limit = orchestrate(tenant_a, {"intent": "nap", "payload": nested(max_depth - 1)})
        too_deep = orchestrate(tenant_a, {"intent": "nap", "payload": nested(max_depth + 1)})
        # Far past any recursion limit: still a 400, never a server error.
        abyss = "[" * 200_000 + "]" * 200_000
        abyss_response = tenant_a.client.post(
            "/api/orchestrate",
            '{"intent": "nap", "payload": ' + abyss + "}",
            content_type="application/json",
        )
        too_large = orchestrate(
            tenant_a,
            {"intent": "nap", "payload": {"text": "y" * settings.ORCHESTRATE_PAYLOAD_MAX_BYTES}},
        )
        figures.update(
            {
                "max_depth": max_depth,
                "depth_at_limit": at_limit.status_code,
                "depth_over_limit": too_deep.status_code,
                "depth_200000": abyss_response.status_code,
                "payload_limit_bytes": settings.ORCHESTRATE_PAYLOAD_MAX_BYTES,
                "payload_over_limit": too_large.status_code,
            }
        )
        assert at_limit.status_code == 200, at_limit.json()
        for response in (too_deep, abyss_response, too_large):
            assert response.status_code == 400
            body = response.json()
            assert body["status"] == "failed"
            assert body["error"]["code"] == "INVALID_REQUEST"
        assert "payload" in too_large.json()["error"]["details"]
        assert AgentRun.objects.count() == runs_before + 1


@pytest.mark.django_db
def test_s4_page_size_is_capped(s4, tenant_a, make_agent):
    agent = make_agent("Napper", "test-sleep", intents=["nap"])
    RunFactory.create_batch(230, agent=agent)
    with s4.part("page_size") as figures:
        huge = tenant_a.client.get("/api/runs/?page_size=100000")
        refused = {
            value: tenant_a.client.get(f"/api/runs/?page_size={value}").status_code
            for value in ("0", "-1", "abc", "1.5", "")
        }
        figures["rows_for_page_size_100000"] = len(huge.json()["results"])
        figures["malformed_page_size_answers"] = refused
        assert huge.status_code == 200
        assert len(huge.json()["results"]) == 200
        assert huge.json()["next"] is not None
        assert set(refused.values()) == {400}


@pytest.fixture
def stream_server(transactional_db, tmp_path):
    cap = pick(ci=2, full=5)
    server = sse_api_server(
        tmp_path / "uvicorn.log", {"SSE_HEARTBEAT_S": "1", "SSE_MAX_CONNECTIONS_PER_KEY": str(cap)}
    ).start()
    yield server, cap
    server.stop()


def test_s4_open_event_streams_are_capped_per_key(s4, tenant_a, tenant_b, stream_server):
    server, cap = stream_server
    url = f"{server.url}/api/orchestration/events/stream"
    with s4.part("sse_streams_per_key") as figures:
        streams = [SseStream(url, key=tenant_a.raw_key) for _ in range(cap)]
        try:
            refused = SseStream(url, key=tenant_a.raw_key)
            body = json.loads(refused.response.read())
            refused.close()
            with SseStream(url, key=tenant_b.raw_key) as other:
                other_status = other.response.status_code
            figures.update(
                {
                    "cap": cap,
                    "opened": sum(s.response.status_code == 200 for s in streams),
                    "next_stream": refused.response.status_code,
                    "other_key": other_status,
                    "also_tested_in": "tests/orchestration/test_events_stream.py"
                    "::test_open_streams_are_capped_per_key",
                }
            )
            assert all(s.response.status_code == 200 for s in streams)
            assert refused.response.status_code == 429
            assert body["error"]["code"] == "RATE_LIMITED"
            assert body["error"]["details"] == {"limit": cap}
            assert other_status == 200
        finally:
            for stream in streams:
                stream.close()
