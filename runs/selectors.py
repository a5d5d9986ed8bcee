"""Read queries of the runs app."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from runs.models import AgentRun, ToolExecution

# Big JSON columns the run list never shows.
_LIST_DEFERRED = ("input", "output", "meta")


def run_list() -> QuerySet[AgentRun]:
    return AgentRun.objects.select_related("agent").defer(*_LIST_DEFERRED)


def run_detail() -> QuerySet[AgentRun]:
    return AgentRun.objects.select_related("agent", "dataset").prefetch_related(
        "metric_rows",
        "steps",
        Prefetch("tool_executions", queryset=ToolExecution.objects.select_related("tool")),
    )
