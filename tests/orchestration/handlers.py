"""Throw-away handlers for the orchestration tests (also imported by test Celery workers)."""

from __future__ import annotations

import os
import signal
import time
from collections import defaultdict

from agents.handlers.base import (
    AgentHandler,
    HandlerError,
    PermanentHandlerError,
    RetryableError,
)
from agents.handlers.registry import register
from orchestration import bus
from orchestration.choices import EventType
from runs.models import AgentRun

CALLS: dict[str, int] = defaultdict(int)


@register
class SleepHandler(AgentHandler):
    key = "test-sleep"

    def handle(self, request, ctx):
        CALLS[request.run_id] += 1
        sleep_ms = int((request.payload or {}).get("sleep_ms", 0))
        with ctx.step("sleep", {"ms": sleep_ms}) as step:
            with ctx.tool("clock", {"ms": sleep_ms}, call_id="sleep") as call:
                time.sleep(sleep_ms / 1000)
                call.output = {"slept": sleep_ms}
            step.result = {"ok": True}
        ctx.metric("tokens_in", 3, source="test")
        return {"slept": sleep_ms, "echo": request.payload}


@register
class OwnRowHandler(AgentHandler):
    """Answers what its own run's row holds while it executes (read on its own connection)."""

    key = "test-own-row"

    def handle(self, request, ctx):
        row = AgentRun.objects.get(pk=request.run_id)
        return {
            "status": row.status,
            "attempt": row.attempt,
            "node": row.node_id,
            "leased": row.lease_expires_at is not None and row.lease_expires_at > row.started_at,
            "queuedAtStart": row.queued_at == row.started_at,
        }


@register
class FailHandler(AgentHandler):
    key = "test-fail"

    def handle(self, request, ctx):
        CALLS[request.run_id] += 1
        ctx.metric("tokens_in", 1)
        # A failure of the agent itself: not retried, but it counts against the circuit.
        raise HandlerError("the model refused", details={"reason": "test"})


@register
class FlakyHandler(AgentHandler):
    """Fails with a retryable error on its first call per run, then succeeds."""

    key = "test-flaky"

    def handle(self, request, ctx):
        CALLS[request.run_id] += 1
        with ctx.tool("upstream", {"n": CALLS[request.run_id]}, call_id="upstream-call") as call:
            if CALLS[request.run_id] == 1:
                raise RetryableError("upstream hiccup")
            call.output = {"ok": True}
        return {"calls": CALLS[request.run_id]}


@register
class ToolFailHandler(AgentHandler):
    """A failing tool the handler recovers from: the run's outcome follows the handler."""

    key = "test-tool-fail"

    def handle(self, request, ctx):
        try:
            with ctx.tool("flaky-search", {"q": "x"}):
                raise ValueError("index offline")
        except ValueError:
            pass
        with ctx.tool("fallback-search", {"q": "x"}) as call:
            call.output = {"hits": 1}
        return {"used": "fallback"}


@register
class WaitForCancelHandler(AgentHandler):
    key = "test-wait-cancel"

    def handle(self, request, ctx):
        deadline = time.monotonic() + float((request.payload or {}).get("max_s", 10))
        while time.monotonic() < deadline:
            if ctx.cancelled:
                raise PermanentHandlerError("stopped: cancelled")
            time.sleep(0.02)
        return {"cancelled": False}


@register
class BadInputHandler(AgentHandler):
    """Refuses every payload as invalid: the request's fault, not the agent's."""

    key = "test-bad-input"

    def handle(self, request, ctx):
        raise PermanentHandlerError("payload.text is required")


@register
class PublishHandler(AgentHandler):
    """Publishes an agent.message on the bus from wherever it runs (a worker process)."""

    key = "test-publish"

    def handle(self, request, ctx):
        run = AgentRun.objects.select_related("organization", "agent").get(pk=request.run_id)
        event = bus.publish(
            EventType.AGENT_MESSAGE,
            {"seq": (request.payload or {}).get("seq"), "from": "test-publish"},
            organization=run.organization,
            agent=run.agent,
            run=run,
        )
        return {"event": event.pk if event else None}


@register
class PoisonHandler(AgentHandler):
    """Kills the Celery pool process executing it, every time (the fault suite's F6).

    Each execution first appends a line to payload["marker"], so the test can count them.
    Outside a Celery worker it refuses rather than take the calling process down.
    """

    key = "test-poison"

    def handle(self, request, ctx):
        from orchestration.worker import runtime

        marker = (request.payload or {}).get("marker")
        if marker:
            with open(marker, "a") as executions:
                executions.write(f"{request.run_id} {os.getpid()}\n")
        if not runtime.managed_by_worker:
            raise PermanentHandlerError("test-poison only runs in a Celery worker")
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)  # never reached: the signal is delivered at once
        return {}
