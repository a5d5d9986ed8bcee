"""Read queries of the runs app."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from runs.models import AgentRun, ToolExecution

# Big JSON columns the run list never shows.
_LIST_DEFERRED = ("input", "output", "meta")


# What a row of GET /api/runs/ shows (runs/api/serializers.py RunListSerializer), and no
# more: the page is the API's hottest read, and every column costs a conversion per row
# (timestamps and JSON most), the joined agent's config above all.
_LIST_PAGE_COLUMNS = (
    "id",
    "created_at",
    "agent",
    "agent__name",
    "agent__slug",
    "intent",
    "status",
    "objective",
    "error_code",
    "error_message",
    "attempt",
    "node_id",
    "idempotency_key",
    "retry_of",
    "metrics",
    "queued_at",
    "started_at",
    "completed_at",
    "duration_ms",
)


def run_list() -> QuerySet[AgentRun]:
    return AgentRun.objects.select_related("agent").defer(*_LIST_DEFERRED)


def run_list_page() -> QuerySet[AgentRun]:
    """GET /api/runs/: only the columns its rows show (the query count test pins that
    nothing deferred is read afterwards, one query per row)."""
    return AgentRun.objects.select_related("agent").only(*_LIST_PAGE_COLUMNS)


def run_detail() -> QuerySet[AgentRun]:
    return AgentRun.objects.select_related("agent", "dataset").prefetch_related(
        "metric_rows",
        "steps",
        Prefetch("tool_executions", queryset=ToolExecution.objects.select_related("tool")),
    )
