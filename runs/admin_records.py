"""The pieces of an admin for big, append-only record tables (runs, events).

Shared by runs/admin.py and orchestration/admin.py: a paginator that never counts a
whole table, a view-only base scoped to the user's organizations, a changelist that
leaves big JSON columns out, and small display helpers.
"""

from __future__ import annotations

import json
import uuid

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html

from agents.admin_scope import OrganizationScopedAdmin
from runs.choices import RunStatus


class LargeTablePaginator(Paginator):
    """Counts a run-sized table without ever counting all of it.

    Counting every row takes seconds and is repeated on every page view, while the page
    links only need a magnitude. An unfiltered list uses PostgreSQL's row estimate; any
    other list is counted only up to COUNT_LIMIT rows (SELECT COUNT(*) over a LIMITed
    subquery), which is exact for the small lists people filter down to and bounded work
    for the big ones, whose page links then stop at COUNT_LIMIT rows.
    """

    # Below this a real count is cheap, and statistics on a young table are unreliable.
    EXACT_COUNT_BELOW = 100_000
    COUNT_LIMIT = 10_000

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return super().count
        estimate = None if queryset.query.where else self._estimate(queryset)
        if estimate is not None and estimate >= self.EXACT_COUNT_BELOW:
            return estimate
        counted = queryset.order_by()[: self.COUNT_LIMIT].count()
        if counted >= self.COUNT_LIMIT and estimate is not None:
            return max(estimate, counted)
        return counted

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


class RecordAdmin(OrganizationScopedAdmin):
    """View-only: records are written by the orchestrator and never changed by hand."""

    show_full_result_count = False
    # Facet counts are one COUNT per filter choice over the whole list.
    show_facets = admin.ShowFacets.NEVER
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


STATUS_COLORS = {
    RunStatus.PENDING: "#6b7280",
    RunStatus.RUNNING: "#2563eb",
    RunStatus.SUCCESS: "#15803d",
    RunStatus.FAILED: "#b91c1c",
    RunStatus.CANCELLED: "#a16207",
}


def status_badge(status: str, label: str) -> str:
    color = STATUS_COLORS.get(status, "#6b7280")
    return format_html(
        '<span class="run-status" style="background:{};color:#fff;padding:1px 7px;'
        'border-radius:9px;font-size:11px;white-space:nowrap">{}</span>',
        color,
        label,
    )


def duration_text(duration_ms: int | None) -> str:
    if duration_ms is None:
        return "-"
    if duration_ms < 1000:
        return f"{duration_ms} ms"
    if duration_ms < 120_000:
        return f"{duration_ms / 1000:.1f} s"
    return f"{duration_ms / 60_000:.1f} min"
