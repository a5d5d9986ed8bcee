"""The Prometheus metrics this process updates, and the helpers the services call.

Counters and histograms live here as module-level objects. When PROMETHEUS_MULTIPROC_DIR
is set (before the process starts), prometheus_client writes every process's values to
its own file in that directory and /metrics sums them, so the figures are right under
several gunicorn workers and Celery processes. Gauges that describe the fleet are not
here: they are computed when /metrics is scraped (collectors.py), once, whatever the
number of processes.

Every helper is cheap and never raises into its caller: losing a sample must not fail
the run that produced it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from django.utils.text import slugify
from prometheus_client import Counter, Histogram

from orchestration import bus

logger = logging.getLogger(__name__)

# Seconds from the claim to the finish; agent calls range from milliseconds to minutes.
RUN_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

RUNS = Counter(
    "acp_runs_total",
    "Runs executed to an end by a node, by agent, intent and final status.",
    ["agent", "intent", "status"],
)
RUN_DURATION = Histogram(
    "acp_run_duration_seconds",
    "Time from a run's claim to its finish, by agent.",
    ["agent"],
    buckets=RUN_DURATION_BUCKETS,
)
TOOL_EXECUTIONS = Counter(
    "acp_tool_executions_total",
    "Tool executions recorded when runs end, by their status.",
    ["status"],
)
RATE_LIMITED = Counter(
    "acp_rate_limited_total",
    "Requests refused by the rate limit, by agent and the scope that refused.",
    ["agent", "scope"],
)
EVENT_PUBLISH_FAILURES = Counter(
    "acp_event_publish_failures_total",
    "Events the bus could not record (orchestration.bus.publish_failures).",
)

EVENT_BROADCASTS_DROPPED = Counter(
    "acp_event_broadcasts_dropped_total",
    "Committed events not broadcast live: the send queue was full or Redis refused the batch"
    " (orchestration.bus.broadcast_dropped; the rows are kept, streams catch up from them).",
)

_publish_failures_lock = threading.Lock()
_publish_failures_seen = 0
_broadcast_dropped_seen = 0


def agent_label(*, organization_slug: str, agent_slug: str) -> str:
    """The ``agent`` label: slugs are unique only within an organization, label sets must be
    unique fleet-wide (two series with one label set would be rejected by Prometheus)."""
    return f"{organization_slug}/{agent_slug}"


def event_publish_failures_sync() -> None:
    """Carry the bus's in-process failure counts (events not recorded, events not broadcast)
    into the counters (only the increase).

    The bus counts failures in a plain integer; copying its growth here, from the places
    this process passes through anyway (a run's end, a refusal, a scrape), makes the
    figure summable across processes without the bus knowing about Prometheus. Calling it
    any number of times is harmless.
    """
    global _publish_failures_seen, _broadcast_dropped_seen
    with _publish_failures_lock:
        total = bus.publish_failures
        delta, _publish_failures_seen = total - _publish_failures_seen, total
        dropped = bus.broadcast_dropped
        delta_dropped, _broadcast_dropped_seen = dropped - _broadcast_dropped_seen, dropped
    if delta > 0:
        EVENT_PUBLISH_FAILURES.inc(delta)
    if delta_dropped > 0:
        EVENT_BROADCASTS_DROPPED.inc(delta_dropped)


def tool_call_statuses(contexts: Iterable) -> list[str]:
    """The status of each tool execution the recorder wrote for these attempt contexts.

    The recorder keeps one row per (tool, call id), the latest attempt winning
    (runs/recorder.py recording_flush); this counts the same rows.
    """
    calls = {}
    for ctx in contexts:
        for call in ctx.tool_calls.values():
            calls[(slugify(call.slug) or "tool", call.call_id)] = call.status
    return list(calls.values())


def run_end_observe(*, run, agent, status: str, duration_ms: int, contexts=()) -> None:
    """A run's outcome was written (the fenced finish succeeded) and committed."""
    try:
        label = agent_label(organization_slug=run.organization.slug, agent_slug=agent.slug)
        RUNS.labels(agent=label, intent=run.intent, status=str(status)).inc()
        RUN_DURATION.labels(agent=label).observe(max(0, duration_ms) / 1000)
        for tool_status in tool_call_statuses(contexts):
            TOOL_EXECUTIONS.labels(status=str(tool_status)).inc()
        event_publish_failures_sync()
    except Exception:  # a lost sample must never fail the run
        logger.exception("run metrics not recorded")


def rate_limit_observe(*, organization, agent, scope: str) -> None:
    """A request to ``agent`` was refused by the rate limit of ``scope``."""
    try:
        label = agent_label(organization_slug=organization.slug, agent_slug=agent.slug)
        RATE_LIMITED.labels(agent=label, scope=scope or "unknown").inc()
        event_publish_failures_sync()
    except Exception:
        logger.exception("rate-limit metric not recorded")
