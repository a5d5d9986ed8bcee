"""The operators' dashboard on the admin index: how much runs, how well, and where.

Shown by templates/admin/index.html through {% console_dashboard %}
(orchestration/templatetags/console.py) and refreshed in place by console.js from
dashboard_data(), a JSON endpoint under the node admin's URLs.

agent_runs grows without bound, so every run figure reads a time-bounded slice through
an index and nothing counts the whole table:

- runs per minute and success rate: one GROUP BY minute over the last 24 hours
  (run_created_idx; run_org_created_id_idx for a staff user scoped to organizations);
- p50 / p95 per agent, the PENDING backlog: fleet_metrics() (services/fleet_metrics.py);
- the oldest PENDING run: run_active_status_idx, the partial index of active runs;
- the latest failures of the day: run_status_created_idx;
- nodes: health.check_nodes() (one aggregate, one bounded list);
- open circuits: the agents of the newest circuit.opened events (event_type_id_idx),
  asked of the policy store, as the health check does.

A staff user who is not a superuser sees the figures of their organizations only
(agents/admin_scope.py); nodes are fleet-wide and need the node view permission.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, Q, QuerySet
from django.db.models.functions import TruncMinute
from django.http import HttpRequest, JsonResponse
from django.template.loader import render_to_string
from django.urls import path
from django.utils import timezone

from agents.admin_scope import VIEW, organizations_with
from agents.models import Agent
from orchestration.choices import EventType
from orchestration.models import OrchestratorEvent
from orchestration.policies import CircuitState, PolicyStoreUnavailable
from orchestration.services.circuits import circuit_list
from orchestration.services.fleet_metrics import fleet_metrics
from orchestration.services.health import CIRCUIT_EVENT_LIMIT, check_nodes
from runs.choices import RunStatus
from runs.models import AgentRun

HOUR = timedelta(hours=1)
DAY = timedelta(hours=24)
FAILURES_SHOWN = 10
AGENTS_SHOWN = 15
REFRESH_SECONDS = 15
# Circuits worth a look: rejecting calls, or probing whether to stop.
NOTABLE_CIRCUIT_STATES = frozenset(
    {CircuitState.OPEN, CircuitState.FORCED_OPEN, CircuitState.HALF_OPEN}
)
BODY_TEMPLATE = "admin/console/dashboard_body.html"


@dataclass(frozen=True)
class Bucket:
    """Runs created in [start, start + width)."""

    start: datetime
    width: timedelta
    total: int = 0
    succeeded: int = 0
    failed: int = 0

    @property
    def other(self) -> int:
        return self.total - self.succeeded - self.failed

    @property
    def success_rate(self) -> float | None:
        """Over decided runs (SUCCESS + FAILED): a cancellation says nothing of the agent."""
        decided = self.succeeded + self.failed
        return self.succeeded / decided if decided else None

    @property
    def per_minute(self) -> float:
        return self.total / (self.width.total_seconds() / 60)


@dataclass(frozen=True)
class Series:
    buckets: list[Bucket]

    @property
    def total(self) -> Bucket:
        first = self.buckets[0]
        width = first.width * len(self.buckets)
        return Bucket(
            start=first.start,
            width=width,
            total=sum(b.total for b in self.buckets),
            succeeded=sum(b.succeeded for b in self.buckets),
            failed=sum(b.failed for b in self.buckets),
        )


# --- selectors ---------------------------------------------------------------------------


def console_runs(request: HttpRequest) -> QuerySet[AgentRun]:
    organizations = organizations_with(request, VIEW)
    if organizations is None:
        return AgentRun.objects.all()
    return AgentRun.objects.filter(organization_id__in=organizations)


def runs_per_minute(runs: QuerySet[AgentRun], *, now: datetime) -> dict[datetime, Bucket]:
    """The last 24 hours by minute, in one grouped query over the created_at index."""
    rows = (
        runs.filter(created_at__gt=now - DAY, created_at__lte=now)
        .annotate(minute=TruncMinute("created_at"))
        .order_by()
        .values("minute")
        .annotate(
            total=Count("id"),
            succeeded=Count("id", filter=Q(status=RunStatus.SUCCESS)),
            failed=Count("id", filter=Q(status=RunStatus.FAILED)),
        )
    )
    minute = timedelta(minutes=1)
    return {
        row["minute"]: Bucket(row["minute"], minute, row["total"], row["succeeded"], row["failed"])
        for row in rows
    }


def series(by_minute: dict[datetime, Bucket], *, now: datetime, window, width) -> Series:
    """Buckets of `width` covering `window` up to now, empty ones included."""
    minute = timedelta(minutes=1)
    end = now.replace(second=0, microsecond=0) + minute
    count = int(window / width)
    starts = [end - width * (count - i) for i in range(count)]
    buckets = []
    for start in starts:
        inside = [by_minute.get(start + minute * i) for i in range(int(width / minute))]
        inside = [b for b in inside if b is not None]
        buckets.append(
            Bucket(
                start=start,
                width=width,
                total=sum(b.total for b in inside),
                succeeded=sum(b.succeeded for b in inside),
                failed=sum(b.failed for b in inside),
            )
        )
    return Series(buckets)


def agent_latencies(organizations: frozenset | None, *, now: datetime) -> dict:
    """fleet_metrics() for the fleet, or for the user's organizations (the same queries,
    however many organizations)."""
    return fleet_metrics(organizations=organizations, now=now)


def oldest_pending_age_s(runs: QuerySet[AgentRun], *, now: datetime) -> float | None:
    oldest = (
        runs.filter(status=RunStatus.PENDING)
        .order_by("created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    return max(0.0, (now - oldest).total_seconds()) if oldest else None


def latest_failures(runs: QuerySet[AgentRun], *, now: datetime) -> list[AgentRun]:
    return list(
        runs.filter(status=RunStatus.FAILED, created_at__gt=now - DAY)
        .select_related("agent", "organization")
        .only(
            "id",
            "intent",
            "error_code",
            "error_message",
            "created_at",
            "agent__name",
            "organization__slug",
        )
        .order_by("-created_at")[:FAILURES_SHOWN]
    )


def notable_circuits(organizations: frozenset | None) -> tuple[list, str | None]:
    """(circuits that are open or half-open, the policy store's error if unreachable)."""
    events = OrchestratorEvent.objects.filter(type=EventType.CIRCUIT_OPENED, agent__isnull=False)
    if organizations is not None:
        events = events.filter(organization_id__in=organizations)
    agent_ids = set(events.order_by("-id").values_list("agent_id", flat=True)[:CIRCUIT_EVENT_LIMIT])
    if not agent_ids:
        return [], None
    agents = (
        Agent.objects.filter(pk__in=agent_ids)
        .select_related("organization")
        .prefetch_related("config_entries")
    )
    try:
        circuits = circuit_list(agents=agents)
    except PolicyStoreUnavailable as exc:
        return [], str(exc)
    notable = [item for item in circuits if item.snapshot.state in NOTABLE_CIRCUIT_STATES]
    return sorted(notable, key=lambda item: item.agent.name), None


# --- the dashboard -----------------------------------------------------------------------


def dashboard_context(request: HttpRequest, *, now: datetime | None = None) -> dict:
    """Everything the dashboard shows, each part only to users allowed to see it."""
    now = now or timezone.now()
    user = request.user
    organizations = organizations_with(request, VIEW)
    context: dict = {
        "now": now,
        "refresh_seconds": REFRESH_SECONDS,
        "scope": "the whole fleet" if organizations is None else "your organizations",
        "show_runs": user.has_perm("runs.view_agentrun"),
        "show_nodes": user.has_perm("orchestration.view_orchestratornode"),
        "show_circuits": user.has_perm("agents.view_agent"),
    }
    if context["show_runs"]:
        runs = console_runs(request)
        by_minute = runs_per_minute(runs, now=now)
        hour = series(by_minute, now=now, window=HOUR, width=timedelta(minutes=1))
        day = series(by_minute, now=now, window=DAY, width=timedelta(minutes=30))
        figures = agent_latencies(organizations, now=now)
        context.update(
            hour=hour,
            day=day,
            agents=figures["agents"][:AGENTS_SHOWN],
            agents_more=max(0, len(figures["agents"]) - AGENTS_SHOWN),
            pending=figures["pendingBacklog"],
            running=figures["activeRequests"],
            oldest_pending_s=oldest_pending_age_s(runs, now=now),
            failures=latest_failures(runs, now=now),
        )
    if context["show_nodes"]:
        node_check, nodes = check_nodes(now=now)
        context.update(node_check=node_check, nodes=nodes)
    if context["show_circuits"]:
        circuits, store_error = notable_circuits(organizations)
        context.update(circuits=circuits, circuit_store_error=store_error)
    return context


def dashboard_figures(context: dict) -> dict:
    """The headline numbers, for scripts that poll the endpoint."""
    figures: dict = {"generatedAt": context["now"].isoformat()}
    if context["show_runs"]:
        for name in ("hour", "day"):
            total = context[name].total
            figures[name] = {
                "runs": total.total,
                "runsPerMinute": round(total.per_minute, 2),
                "successRate": None if total.success_rate is None else round(total.success_rate, 4),
            }
        figures["pendingBacklog"] = context["pending"]
        figures["running"] = context["running"]
        figures["latestFailures"] = [str(run.pk) for run in context["failures"]]
    if context["show_nodes"]:
        figures["nodes"] = {node["id"]: node["status"] for node in context["nodes"]}
    if context["show_circuits"]:
        figures["notableCircuits"] = [str(item.agent.pk) for item in context["circuits"]]
    return figures


def dashboard_data(request: HttpRequest) -> JsonResponse:
    """GET: the dashboard body (HTML, rendered here so the charts stay server-side SVG)."""
    context = dashboard_context(request)
    html = render_to_string(BODY_TEMPLATE, context, request=request)
    response = JsonResponse({"figures": dashboard_figures(context), "html": html})
    response["Cache-Control"] = "no-store"
    return response


def admin_urls(site) -> list:
    return [
        path(
            "console/data.json",
            site.admin_view(dashboard_data),
            name="orchestration_console_data",
        )
    ]
