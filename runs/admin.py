"""The operators' console for what did run. Runs are records: viewed here, never edited."""

from __future__ import annotations

import json
import uuid

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html

from runs.models import AgentJob, AgentRun, AgentRunMetric, RunStep, ToolExecution

TIMESTAMPS = ("created_at", "updated_at")


class LargeTablePaginator(Paginator):
    """Uses PostgreSQL's row estimate instead of COUNT(*) for an unfiltered list.

    Counting every row of a run-sized table takes seconds and is repeated on every page
    view; the page links only need a magnitude. Filtered lists are counted exactly.
    """

    # Below this a real count is cheap, and statistics on a young table are unreliable.
    EXACT_COUNT_BELOW = 100_000

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if isinstance(queryset, QuerySet) and not queryset.query.where:
            estimate = self._estimate(queryset)
            if estimate is not None and estimate >= self.EXACT_COUNT_BELOW:
                return estimate
        return super().count

    @staticmethod
    def _estimate(queryset: QuerySet) -> int | None:
        connection = connections[queryset.db]
        if connection.vendor != "postgresql":
            return None
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT reltuples::bigint FROM pg_class WHERE relname = %s",
                [queryset.model._meta.db_table],
            )
            row = cursor.fetchone()
        # reltuples is -1 until the table is first vacuumed or analyzed.
        return int(row[0]) if row and row[0] >= 0 else None


class RecordAdmin(admin.ModelAdmin):
    """View-only: records are written by the orchestrator and never changed by hand."""

    show_full_result_count = False
    paginator = LargeTablePaginator

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class RecordInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


def parse_uuid(term: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(term.strip())
    except ValueError:
        return None


def pretty_json(value) -> str:
    if value is None:
        return "-"
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True, default=str))


def run_link(run_id: uuid.UUID | None) -> str:
    """A link by id, so lists of child rows never join (and load) the wide run rows."""
    if run_id is None:
        return "-"
    return format_html(
        '<a href="{}">{}</a>', reverse("admin:runs_agentrun_change", args=[run_id]), run_id
    )


def deferring_changelist(columns: tuple[str, ...]) -> type[ChangeList]:
    """A ChangeList that leaves big JSON columns out of the list query only.

    ModelAdmin.get_queryset also serves the detail page, which shows them.
    """

    class DeferringChangeList(ChangeList):
        def get_queryset(self, request, exclude_parameters=None):
            return super().get_queryset(request, exclude_parameters).defer(*columns)

    return DeferringChangeList


# --- Runs --------------------------------------------------------------------------------


class AgentRunMetricInline(RecordInline):
    model = AgentRunMetric
    fields = ("name", "value", "metadata", "created_at")
    readonly_fields = ("created_at",)


class ToolExecutionInline(RecordInline):
    model = ToolExecution
    fields = ("tool", "call_id", "status", "started_at", "duration_ms", "error")

    def get_queryset(self, request: HttpRequest) -> QuerySet[ToolExecution]:
        return super().get_queryset(request).select_related("tool")


class RunStepInline(RecordInline):
    model = RunStep
    fields = ("position", "name", "status", "started_at", "duration_ms", "error")


@admin.register(AgentRun)
class AgentRunAdmin(RecordAdmin):
    list_display = (
        "id",
        "intent",
        "agent",
        "organization",
        "status",
        "error_code",
        "attempt",
        "node_id",
        "created_at",
        "duration_ms",
    )
    list_filter = ("status", "error_code", "organization")
    list_select_related = ("agent", "organization")
    # The id is matched in get_search_results: a UUID term that is not one would
    # otherwise fail validation instead of finding nothing.
    search_fields = ("idempotency_key__exact", "error_message")
    date_hierarchy = "created_at"
    raw_id_fields = ("organization", "agent", "dataset", "user", "retry_of")
    inlines = (AgentRunMetricInline, ToolExecutionInline, RunStepInline)
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "organization",
                    "agent",
                    "intent",
                    "status",
                    "error_code",
                    "error_message",
                    "objective",
                    "dataset",
                    "user",
                )
            },
        ),
        (
            "Execution",
            {
                "fields": (
                    "node_id",
                    "attempt",
                    "retry_of",
                    "idempotency_key",
                    "input_hash",
                    "queued_at",
                    "started_at",
                    "completed_at",
                    "duration_ms",
                    "lease_expires_at",
                    "cancel_requested_at",
                    *TIMESTAMPS,
                )
            },
        ),
        ("Data", {"fields": ("input_json", "output_json", "metrics_json", "meta_json")}),
    )
    readonly_fields = ("id", *TIMESTAMPS, "input_json", "output_json", "metrics_json", "meta_json")

    def get_changelist(self, request: HttpRequest, **kwargs) -> type[ChangeList]:
        return deferring_changelist(("input", "output", "metrics", "meta"))

    def get_search_results(self, request, queryset, search_term):
        run_id = parse_uuid(search_term)
        if run_id is None:
            return super().get_search_results(request, queryset, search_term)
        # Clients often use UUIDs as idempotency keys too.
        return queryset.filter(Q(pk=run_id) | Q(idempotency_key=search_term.strip())), False

    @admin.display(description="input")
    def input_json(self, obj: AgentRun) -> str:
        return pretty_json(obj.input)

    @admin.display(description="output")
    def output_json(self, obj: AgentRun) -> str:
        return pretty_json(obj.output)

    @admin.display(description="metrics")
    def metrics_json(self, obj: AgentRun) -> str:
        return pretty_json(obj.metrics)

    @admin.display(description="meta")
    def meta_json(self, obj: AgentRun) -> str:
        return pretty_json(obj.meta)


class RunChildAdmin(RecordAdmin):
    """Rows that belong to a run: linked to it by id and found by pasting its id."""

    @admin.display(description="run", ordering="run_id")
    def run_id_link(self, obj) -> str:
        return run_link(obj.run_id)

    def get_search_results(self, request, queryset, search_term):
        run_id = parse_uuid(search_term)
        if run_id is None:
            return super().get_search_results(request, queryset, search_term)
        return queryset.filter(run_id=run_id), False


@admin.register(AgentRunMetric)
class AgentRunMetricAdmin(RunChildAdmin):
    list_display = ("name", "value", "run_id_link", "created_at")
    raw_id_fields = ("run",)
    search_fields = ("name__exact",)
    readonly_fields = TIMESTAMPS


@admin.register(ToolExecution)
class ToolExecutionAdmin(RunChildAdmin):
    list_display = ("call_id", "tool", "run_id_link", "status", "started_at", "duration_ms")
    list_filter = ("status",)
    list_select_related = ("tool",)
    raw_id_fields = ("tool", "run")
    search_fields = ("call_id__exact", "tool__slug__exact")
    readonly_fields = TIMESTAMPS

    def get_changelist(self, request: HttpRequest, **kwargs) -> type[ChangeList]:
        return deferring_changelist(("input", "output", "metadata"))


@admin.register(RunStep)
class RunStepAdmin(RunChildAdmin):
    list_display = ("name", "run_id_link", "position", "status", "started_at", "duration_ms")
    list_filter = ("status",)
    raw_id_fields = ("run",)
    search_fields = ("name",)
    readonly_fields = TIMESTAMPS

    def get_changelist(self, request: HttpRequest, **kwargs) -> type[ChangeList]:
        return deferring_changelist(("payload", "result"))


@admin.register(AgentJob)
class AgentJobAdmin(RecordAdmin):
    """The legacy table, kept readable until migrate_agent_jobs has moved it into runs."""

    list_display = ("agent_name", "organization", "status", "created_by", "created_at")
    list_filter = ("status", "organization")
    list_select_related = ("organization",)
    search_fields = ("agent_name", "created_by")
    raw_id_fields = ("organization",)
    readonly_fields = TIMESTAMPS

    def get_changelist(self, request: HttpRequest, **kwargs) -> type[ChangeList]:
        return deferring_changelist(("input", "output", "metrics"))
