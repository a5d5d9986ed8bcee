"""The benchmarks' agent handler, importable by worker processes (AGENT_HANDLER_MODULES).

A no-op that records what a typical run records: 3 metrics and 1 tool execution.
"""

from __future__ import annotations

from agents.handlers.base import AgentHandler
from agents.handlers.registry import registry

KEY = "bench-noop"


class NoopHandler(AgentHandler):
    key = KEY

    def handle(self, request, ctx):
        ctx.metric("tokens_in", 3)
        ctx.metric("tokens_out", 5)
        ctx.metric("cost_usd", 0.0001)
        with ctx.tool("bench-tool", {"q": 1}, call_id="c1") as call:
            call.output = {"ok": True}
        return {"ok": True}


if not registry.is_registered(KEY):
    registry.register(NoopHandler)
