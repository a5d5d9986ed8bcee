"""The built-in "http" handler end to end, against real servers (API.md "Remote HTTP agents").

The orchestrator runs in pytest-django's live server and is driven over HTTP; the remote
agent is a real ThreadingHTTPServer on 127.0.0.1 that reports back through the run's
callback endpoints with the run token it was handed. Nothing is mocked.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from agents.models import Tool
from runs.choices import RunStatus
from runs.models import AgentRun, AgentRunMetric, RunStep, ToolExecution

# A remote behaviour: (remote, received body) -> (HTTP status, JSON answer).
Behaviour = Callable[["RemoteAgent", dict], tuple[int, Any]]

HTTP_TIMEOUT_S = 15.0


class RemoteAgent:
    """A real HTTP server playing a remote agent; its behaviour is set per test."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.callbacks: list[tuple[str, int, Any]] = []  # (endpoint, status, answer)
        self.behaviour: Behaviour = lambda remote, body: (200, {"ok": True})
        self.release = threading.Event()  # wakes a sleeping behaviour at teardown
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/agent"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def record(self, body: dict) -> None:
        with self._lock:
            self.received.append(body)

    @property
    def attempts(self) -> list[int]:
        return [body["attempt"] for body in self.received]

    def report(self, body: dict, endpoint: str, report: dict, token: str | None = None) -> int:
        """POST one report to the run's callback endpoint, as a remote agent does."""
        callback = body["callback"]
        response = httpx.post(
            callback["baseUrl"] + endpoint,
            json=report,
            headers={"Authorization": f"Bearer {token or callback['token']}"},
            timeout=HTTP_TIMEOUT_S,
        )
        try:
            answer = response.json()
        except ValueError:
            answer = response.text
        with self._lock:
            self.callbacks.append((endpoint, response.status_code, answer))
        return response.status_code


def _handler_class(remote: RemoteAgent) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"null")
            remote.record(body)
            status, answer = remote.behaviour(remote, body)
            raw = json.dumps(answer).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
            except OSError:
                pass  # the orchestrator stopped waiting (timeout): nobody reads the answer

        def log_message(self, format, *args) -> None:
            pass

    return Handler


@pytest.fixture
def remote():
    agent = RemoteAgent()
    agent.start()
    yield agent
    agent.stop()


@pytest.fixture
def orchestrator(live_server, settings, tenant_a):
    """POSTs to the live server's /api/orchestrate (sync) with tenant A's API key."""
    settings.PUBLIC_BASE_URL = live_server.url

    def post(body: dict, **headers) -> httpx.Response:
        return httpx.post(
            live_server.url + "/api/orchestrate",
            json=body,
            headers={"Authorization": f"Bearer {tenant_a.raw_key}", **headers},
            timeout=HTTP_TIMEOUT_S,
        )

    return post


def remote_config(url: str, **overrides) -> dict:
    config = {
        "url": url,
        "timeout_s": 2,
        "connect_timeout_s": 1,
        "retry": {"max_attempts": 3, "base_delay_ms": 1},
    }
    config.update(overrides)
    return config


@pytest.fixture
def remote_agent(make_agent, remote):
    return make_agent("Remote", "http", intents=["remote-echo"], config=remote_config(remote.url))


def closed_port_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/agent"  # nothing listens there any more


def metric_value(run_id, name: str) -> float:
    return AgentRunMetric.objects.get(run_id=run_id, name=name).value


def reporting_behaviour(remote: RemoteAgent, body: dict) -> tuple[int, Any]:
    """Reports a tool call (twice: running, then its outcome), a metric and a step."""
    remote.report(
        body,
        "tool-executions/",
        {
            "tool": "web-search",
            "callId": "call-1",
            "status": "running",
            "input": {"q": body["payload"]["text"]},
            "startedAt": "2025-01-01T00:00:00Z",
        },
    )
    remote.report(
        body,
        "tool-executions/",
        {
            "tool": "web-search",
            "callId": "call-1",
            "status": "success",
            "output": {"hits": 3},
            "completedAt": "2025-01-01T00:00:01Z",
            "durationMs": 1000,
        },
    )
    # The same tool spelled otherwise: one tool, as for a local handler's ctx.tool().
    remote.report(
        body,
        "tool-executions/",
        {"tool": "Web-Search", "callId": "call-2", "status": "failed", "error": "timed out"},
    )
    remote.report(body, "metrics/", {"name": "tokens_out", "value": 42, "metadata": {"m": "x"}})
    remote.report(body, "steps/", {"name": "plan", "status": "success", "result": {"n": 1}})
    return 200, {"echo": body["payload"], "remote": "python", "attempt": body["attempt"]}


class TestSuccess:
    def test_answer_is_the_output_and_reports_are_recorded(
        self, orchestrator, remote, remote_agent, tenant_a, live_server
    ):
        remote.behaviour = reporting_behaviour
        response = orchestrator(
            {
                "intent": "remote-echo",
                "payload": {"text": "hello"},
                "objective": "say hello",
                # Identity comes from the credential, never from the body.
                "context": {"organizationId": "org-b", "userId": "someone"},
            }
        )
        assert response.status_code == 200, response.text
        envelope = response.json()
        run_id = envelope["runId"]
        assert envelope["success"] is True
        assert envelope["status"] == "completed"
        assert envelope["agent"] == "Remote"
        assert envelope["data"] == {"echo": {"text": "hello"}, "remote": "python", "attempt": 1}
        assert envelope["metrics"]["attempts"] == 1

        # What the remote received: the documented body, once.
        assert len(remote.received) == 1
        body = remote.received[0]
        assert body["runId"] == run_id
        assert body["agent"] == "Remote"
        assert body["intent"] == "remote-echo"
        assert body["payload"] == {"text": "hello"}
        assert body["context"]["organization"] == tenant_a.organization.slug == "org-a"
        assert body["context"]["objective"] == "say hello"
        assert "userId" not in body["context"]  # an API key has no user; the body is not trusted
        assert body["attempt"] == 1
        assert body["callback"]["baseUrl"] == f"{live_server.url}/api/runs/{run_id}/"
        assert body["callback"]["baseUrl"].endswith(f"/api/runs/{run_id}/")
        assert body["callback"]["token"].startswith("rt_")

        # Every report was accepted while the run was RUNNING.
        assert [(endpoint, status) for endpoint, status, _ in remote.callbacks] == [
            ("tool-executions/", 201),
            ("tool-executions/", 201),
            ("tool-executions/", 201),
            ("metrics/", 201),
            ("steps/", 201),
        ]
        first, second = remote.callbacks[0][2], remote.callbacks[1][2]
        assert first["callId"] == second["callId"] == "call-1"
        assert first["id"] == second["id"]  # the second report updated the same row

        run = AgentRun.objects.get(pk=run_id)
        assert run.status == RunStatus.SUCCESS
        assert run.organization == tenant_a.organization
        assert run.output == envelope["data"]

        execution = ToolExecution.objects.select_related("tool").get(run=run, call_id="call-1")
        assert str(execution.pk) == first["id"]
        assert execution.call_id == "call-1"
        assert execution.tool.slug == "web-search"
        assert execution.tool.organization == tenant_a.organization
        assert execution.status == "success"
        assert execution.output == {"hits": 3}
        assert execution.duration_ms == 1000
        assert execution.completed_at is not None
        # A partial second report keeps what the first one said.
        assert execution.input == {"q": "hello"}
        assert execution.started_at is not None
        other = ToolExecution.objects.get(run=run, call_id="call-2")
        assert (other.tool_id, other.status, other.error) == (
            execution.tool_id,
            "failed",
            "timed out",
        )
        assert ToolExecution.objects.filter(run=run).count() == 2
        assert Tool.objects.filter(organization=tenant_a.organization).count() == 1

        metric = AgentRunMetric.objects.get(run=run, name="tokens_out")
        assert (metric.value, metric.metadata) == (42.0, {"m": "x"})
        assert metric_value(run.pk, "attempts") == 1.0
        step = RunStep.objects.get(run=run)
        assert (step.name, step.status, step.result) == ("plan", "success", {"n": 1})


class TestRetries:
    def test_5xx_twice_then_200_succeeds_on_the_third_attempt(
        self, orchestrator, remote, remote_agent
    ):
        def behaviour(remote, body):
            if len(remote.received) <= 2:
                return 500, {"error": "overloaded"}
            return 200, {"attempt": body["attempt"]}

        remote.behaviour = behaviour
        response = orchestrator({"intent": "remote-echo", "payload": {"n": 1}})
        assert response.status_code == 200, response.text
        envelope = response.json()
        assert envelope["data"] == {"attempt": 3}
        assert envelope["metrics"]["attempts"] == 3
        assert envelope["metrics"]["retries"] == 2
        assert remote.attempts == [1, 2, 3]
        # Each attempt carries the same run and callback.
        assert {body["runId"] for body in remote.received} == {envelope["runId"]}

        run = AgentRun.objects.get(pk=envelope["runId"])
        assert run.status == RunStatus.SUCCESS
        assert run.metrics["attempts"] == 3
        assert metric_value(run.pk, "attempts") == 3.0
        assert metric_value(run.pk, "retries") == 2.0

    def test_5xx_on_every_attempt_fails_with_the_last_answer_kept(
        self, orchestrator, remote, remote_agent
    ):
        remote.behaviour = lambda remote, body: (503, {"error": f"down {body['attempt']}"})
        response = orchestrator({"intent": "remote-echo", "payload": {}})
        assert response.status_code == 502, response.text
        envelope = response.json()
        assert envelope["error"]["code"] == "AGENT_EXECUTION_FAILED"
        kept = {"status": 503, "answer": {"error": "down 3"}}
        assert envelope["error"]["details"] == kept
        assert remote.attempts == [1, 2, 3]
        run = AgentRun.objects.get(pk=envelope["runId"])
        assert run.status == RunStatus.FAILED
        assert run.meta["errorDetails"] == kept
        assert run.metrics["attempts"] == 3

    def test_a_remote_that_answers_past_the_timeout_is_retried(
        self, orchestrator, remote, make_agent
    ):
        make_agent(
            "Remote",
            "http",
            intents=["remote-echo"],
            config=remote_config(
                remote.url, timeout_s=0.5, retry={"max_attempts": 2, "base_delay_ms": 1}
            ),
        )

        def behaviour(remote, body):
            remote.release.wait(2)  # well past the 0.5 s timeout
            return 200, {"late": True}

        remote.behaviour = behaviour
        response = orchestrator({"intent": "remote-echo", "payload": {}})
        # The executor's per-attempt deadline and the handler's read timeout are the same
        # 0.5 s; whichever notices first decides between 504 and 502. Both are retried.
        assert response.status_code in (502, 504), response.text
        envelope = response.json()
        assert envelope["error"]["code"] in ("AGENT_TIMEOUT", "AGENT_EXECUTION_FAILED")
        assert remote.attempts == [1, 2]
        run = AgentRun.objects.get(pk=envelope["runId"])
        assert run.status == RunStatus.FAILED
        assert run.metrics["attempts"] == 2


class TestFinalFailures:
    def test_4xx_is_final_and_its_answer_is_kept(self, orchestrator, remote, remote_agent):
        remote.behaviour = lambda remote, body: (422, {"error": "payload.text is required"})
        response = orchestrator({"intent": "remote-echo", "payload": {}})
        assert response.status_code == 502, response.text
        envelope = response.json()
        assert envelope["success"] is False
        assert envelope["error"]["code"] == "AGENT_EXECUTION_FAILED"
        assert "422" in envelope["error"]["message"]
        kept = {"status": 422, "answer": {"error": "payload.text is required"}}
        assert envelope["error"]["details"] == kept
        assert remote.attempts == [1]  # not retried

        run = AgentRun.objects.get(pk=envelope["runId"])
        assert run.status == RunStatus.FAILED
        assert run.error_code == "AGENT_EXECUTION_FAILED"
        assert "422" in run.error_message
        assert run.meta["errorDetails"] == kept
        assert run.metrics["attempts"] == 1
        assert metric_value(run.pk, "retries") == 0.0

    def test_connection_refused_is_retried_then_fails(self, orchestrator, make_agent):
        make_agent(
            "Remote", "http", intents=["remote-echo"], config=remote_config(closed_port_url())
        )
        response = orchestrator({"intent": "remote-echo", "payload": {}})
        assert response.status_code == 502, response.text
        envelope = response.json()
        assert envelope["error"]["code"] == "AGENT_EXECUTION_FAILED"
        assert "unreachable" in envelope["error"]["message"]

        run = AgentRun.objects.get(pk=envelope["runId"])
        assert run.status == RunStatus.FAILED
        assert run.metrics["attempts"] == 3
        assert metric_value(run.pk, "attempts") == 3.0
        assert metric_value(run.pk, "retries") == 2.0


class TestRunToken:
    def test_the_token_is_for_its_run_only_and_only_while_it_runs(
        self, orchestrator, remote, remote_agent, live_server
    ):
        # Run X: the remote keeps the token it was handed.
        first = orchestrator({"intent": "remote-echo", "payload": {"run": "x"}})
        assert first.status_code == 200, first.text
        run_x = first.json()["runId"]
        token_x = remote.received[0]["callback"]["token"]
        base_x = remote.received[0]["callback"]["baseUrl"]

        # Run Y: while it is RUNNING, X's token is refused on Y's URLs, Y's own is accepted.
        def behaviour(remote, body):
            remote.report(body, "metrics/", {"name": "foreign", "value": 1}, token=token_x)
            remote.report(body, "metrics/", {"name": "own", "value": 1})
            return 200, {"run": "y"}

        remote.behaviour = behaviour
        second = orchestrator({"intent": "remote-echo", "payload": {"run": "y"}})
        assert second.status_code == 200, second.text
        run_y = second.json()["runId"]
        token_y = remote.received[1]["callback"]["token"]
        assert token_y != token_x
        assert [(endpoint, status) for endpoint, status, _ in remote.callbacks] == [
            ("metrics/", 404),
            ("metrics/", 201),
        ]
        assert not AgentRunMetric.objects.filter(name="foreign").exists()
        assert AgentRunMetric.objects.filter(run_id=run_y, name="own").count() == 1

        def post(url: str, authorization: str | None) -> httpx.Response:
            headers = {"Authorization": authorization} if authorization else {}
            return httpx.post(
                url, json={"name": "late", "value": 1}, headers=headers, timeout=HTTP_TIMEOUT_S
            )

        before = AgentRunMetric.objects.count()
        # The run ended: its own token no longer writes.
        late = post(base_x + "metrics/", f"Bearer {token_x}")
        assert late.status_code in (401, 403), late.text
        assert late.status_code == 403
        assert late.json()["error"]["message"]
        # Another run's token: as if that run did not exist.
        assert (
            post(f"{live_server.url}/api/runs/{run_y}/metrics/", f"Bearer {token_x}").status_code
            == 404
        )
        assert post(base_x + "steps/", f"Bearer {token_y}").status_code == 404
        # Garbage, an API key, or nothing at all: unauthenticated.
        assert post(base_x + "metrics/", "Bearer rt_garbage").status_code == 401
        assert post(base_x + "metrics/", f"Bearer {token_x[:-4]}abcd").status_code == 401
        assert post(base_x + "metrics/", "Bearer not-a-run-token").status_code == 401
        assert post(base_x + "metrics/", None).status_code == 401
        assert AgentRunMetric.objects.count() == before
        assert not AgentRunMetric.objects.filter(name="late").exists()
        assert not RunStep.objects.filter(run_id__in=[run_x, run_y]).exists()
