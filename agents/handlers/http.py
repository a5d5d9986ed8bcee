"""The built-in "http" handler: a remote agent reached over HTTP (API.md "Remote HTTP agents").

Agents written in other languages or running as other services are orchestrated
through it: the orchestrator POSTs the run to ``config.url`` and the JSON answer
becomes the run's output. Connection errors, timeouts and 5xx are retryable; a
4xx is final and its answer is kept with the error.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx

from agents.handlers.base import (
    AgentHandler,
    HandlerRequest,
    PermanentHandlerError,
    RetryableError,
)
from agents.handlers.registry import register

DEFAULT_CONNECT_TIMEOUT_S = 3.0
DEFAULT_READ_TIMEOUT_S = 30.0
_MAX_KEPT_ERROR_BODY = 4000


def _answer(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:_MAX_KEPT_ERROR_BODY]


@register
class HttpAgentHandler(AgentHandler):
    key = "http"
    description = "Calls a remote agent over HTTP and records what it reports back."
    default_config = {"url": "", "connect_timeout_s": DEFAULT_CONNECT_TIMEOUT_S}

    def __init__(self) -> None:
        # One pooled client per thread: keep-alive connections are reused across runs.
        self._local = threading.local()

    def _client(self) -> httpx.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(
                follow_redirects=False, headers={"User-Agent": "agent-control-plane"}
            )
            self._local.client = client
        return client

    def handle(self, request: HandlerRequest, ctx) -> Any:
        config = ctx.config or {}
        url = config.get("url")
        if not url:
            raise PermanentHandlerError("The http agent has no config.url.")
        # A little past the orchestrator's own per-attempt deadline, so a slow agent is
        # reported consistently as AGENT_TIMEOUT by the orchestrator, not as a read error.
        read_timeout = float(config.get("timeout_s") or DEFAULT_READ_TIMEOUT_S) + 1.0
        timeout = httpx.Timeout(
            read_timeout,
            connect=float(config.get("connect_timeout_s") or DEFAULT_CONNECT_TIMEOUT_S),
        )
        context = {"organization": request.organization}
        if request.user_id:
            context["userId"] = request.user_id
        if request.dataset_id:
            context["datasetId"] = request.dataset_id
        if request.objective:
            context["objective"] = request.objective
        body = {
            "runId": request.run_id,
            "agent": request.agent,
            "intent": request.intent,
            "payload": request.payload,
            "context": context,
            "attempt": request.attempt,
            "callback": {"baseUrl": ctx.callback_url, "token": ctx.run_token},
        }
        try:
            response = self._client().post(url, json=body, timeout=timeout)
        except httpx.TimeoutException as exc:
            raise RetryableError(f"The remote agent timed out: {exc}") from exc
        except httpx.TransportError as exc:
            raise RetryableError(f"The remote agent is unreachable: {exc}") from exc
        if response.status_code >= 500:
            raise RetryableError(
                f"The remote agent answered {response.status_code}.",
                details={"status": response.status_code, "answer": _answer(response)},
            )
        if response.status_code >= 400:
            raise PermanentHandlerError(
                f"The remote agent refused the run with {response.status_code}.",
                details={"status": response.status_code, "answer": _answer(response)},
            )
        try:
            return response.json()
        except ValueError as exc:
            raise PermanentHandlerError(
                "The remote agent's answer is not JSON.",
                details={"answer": response.text[:_MAX_KEPT_ERROR_BODY]},
            ) from exc
