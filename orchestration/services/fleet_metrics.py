"""GET /api/orchestration/metrics: fleet and run figures from real rows, cheaply.

agent_runs grows without bound, so every run figure reads a time-bounded slice through
an index, and nothing counts the whole table:

- activeRequests / pendingBacklog: RUNNING / PENDING runs (run_active_status_idx, a
  partial index over the few non-terminal rows; organization-scoped callers use
  run_org_status_started_idx);
- totalRequestsHandled: runs created in the last 24 hours (run_created_idx, or
  run_org_created_id_idx for an organization, index-only) -- a rolling figure, not a
  lifetime total;
- averageLatency and the per-agent figures: runs created in the last hour.

Percentiles are PostgreSQL's percentile_cont; on SQLite (embedded mode) they are
computed here from the same hour of durations.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime, timedelta

from django.db import connection
from django.db.models import Aggregate, Count, FloatField, Q, QuerySet, Sum
from django.utils import timezone

from orchestration.choices import NodeStatus
from orchestration.models import OrchestratorNode
from orchestration.services.routing import node_fresh_since
from runs.choices import RunStatus
from runs.models import AgentRun

AGENT_WINDOW = timedelta(hours=1)
HANDLED_WINDOW = timedelta(hours=24)
AGENT_LIMIT = 100  # the busiest agents; the totals still cover every agent


class PercentileCont(Aggregate):
    """PostgreSQL's ordered-set aggregate percentile_cont(f) WITHIN GROUP (ORDER BY x)."""

    function = "PERCENTILE_CONT"
    name = "PercentileCont"
    output_field = FloatField()
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"

    def __init__(self, expression, fraction: float, **extra) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("a percentile is a fraction between 0 and 1")
        # A float we produced ourselves, never user input: safe to inline.
        super().__init__(expression, fraction=repr(float(fraction)), **extra)


def supports_percentile_cont() -> bool:
    return connection.vendor == "postgresql"


def percentile(values: list[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks: what percentile_cont computes."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return float(ordered[low])
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def duration_percentiles(queryset: QuerySet, fractions: tuple[float, ...]) -> list[float | None]:
    """Percentiles of duration_ms over an (already time-bounded) queryset of runs."""
    finished = queryset.filter(duration_ms__isnull=False)
    if supports_percentile_cont():
        names = {f"p{i}": PercentileCont("duration_ms", f) for i, f in enumerate(fractions)}
        row = finished.aggregate(**names)
        return [row[f"p{i}"] for i in range(len(fractions))]
    durations = list(finished.values_list("duration_ms", flat=True))
    return [percentile(durations, f) for f in fractions]


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(float(value), digits)


def _node_figures(*, now: datetime) -> dict:
    """totalNodes: every node that has not left (OFFLINE); healthyNodes: ACTIVE and fresh."""
    row = OrchestratorNode.objects.exclude(status=NodeStatus.OFFLINE).aggregate(
        total=Count("id"),
        healthy=Count(
            "id",
            filter=Q(status=NodeStatus.ACTIVE, last_heartbeat_at__gte=node_fresh_since(now=now)),
        ),
    )
    return {"totalNodes": row["total"], "healthyNodes": row["healthy"]}


def _agent_rows(runs: QuerySet) -> list[dict]:
    """One grouped query: per agent, counts, duration sums and (on PostgreSQL) percentiles."""
    aggregates = {
        "runs": Count("id"),
        "successes": Count("id", filter=Q(status=RunStatus.SUCCESS)),
        # Cancellations say nothing about the agent; success rate is over SUCCESS + FAILED.
        "decided": Count("id", filter=Q(status__in=[RunStatus.SUCCESS, RunStatus.FAILED])),
        "duration_sum": Sum("duration_ms"),
        "duration_count": Count("duration_ms"),
    }
    if supports_percentile_cont():
        aggregates["p50"] = PercentileCont("duration_ms", 0.5)
        aggregates["p95"] = PercentileCont("duration_ms", 0.95)
    rows = list(
        runs.order_by()
        .values("agent_id", "agent__name", "organization__slug")
        .annotate(**aggregates)
    )
    if not supports_percentile_cont():
        durations: dict = defaultdict(list)
        for agent_id, duration in runs.filter(duration_ms__isnull=False).values_list(
            "agent_id", "duration_ms"
        ):
            durations[agent_id].append(duration)
        for row in rows:
            row["p50"] = percentile(durations[row["agent_id"]], 0.5)
            row["p95"] = percentile(durations[row["agent_id"]], 0.95)
    return rows


def fleet_metrics(*, organization=None, organizations=None, now: datetime | None = None) -> dict:
    """The metrics document; run figures narrowed to one organization, or to the
    organizations whose ids ``organizations`` holds (a staff user's scope), when given.

    A fixed number of queries whatever the number of runs, agents, nodes or organizations.
    """
    now = now or timezone.now()
    runs = AgentRun.objects.all()
    if organization is not None:
        runs = runs.filter(organization=organization)
    if organizations is not None:
        runs = runs.filter(organization_id__in=organizations)
    scoped = organization is not None or organizations is not None

    active = runs.filter(status__in=[RunStatus.PENDING, RunStatus.RUNNING]).aggregate(
        running=Count("id", filter=Q(status=RunStatus.RUNNING)),
        pending=Count("id", filter=Q(status=RunStatus.PENDING)),
    )
    handled = runs.filter(created_at__gte=now - HANDLED_WINDOW, created_at__lte=now).count()

    recent = runs.filter(created_at__gte=now - AGENT_WINDOW, created_at__lte=now)
    rows = _agent_rows(recent)
    duration_sum = sum(row["duration_sum"] or 0 for row in rows)
    duration_count = sum(row["duration_count"] for row in rows)
    rows.sort(key=lambda row: (-row["runs"], row["agent__name"]))
    agents = [
        {
            "agent": row["agent__name"],
            "agentId": str(row["agent_id"]),
            "organization": row["organization__slug"],
            "runs": row["runs"],
            "successRate": (
                round(row["successes"] / row["decided"], 4) if row["decided"] else None
            ),
            "p50DurationMs": _round(row["p50"]),
            "p95DurationMs": _round(row["p95"]),
        }
        for row in rows[:AGENT_LIMIT]
    ]
    return {
        **_node_figures(now=now),
        "activeRequests": active["running"],
        "pendingBacklog": active["pending"],
        "totalRequestsHandled": handled,
        "averageLatency": _round(duration_sum / duration_count) if duration_count else None,
        "requestsLastHour": sum(row["runs"] for row in rows),
        "agents": agents,
        "scope": "organization" if scoped else "fleet",
        "windows": {
            "totalRequestsHandledS": int(HANDLED_WINDOW.total_seconds()),
            "averageLatencyS": int(AGENT_WINDOW.total_seconds()),
            "agentsS": int(AGENT_WINDOW.total_seconds()),
        },
    }
