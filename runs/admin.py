"""The operators' console for what did run. Runs are records: viewed here, never edited."""

from __future__ import annotations

import uuid

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from agents.admin_scope import OPERATE, ScopedRelatedFieldListFilter, scope_queryset
from runs import services
from runs.admin_records import (
    LargeTablePaginator,
    RecordAdmin,
    RecordInline,
    deferring_changelist,
    duration_text,
    parse_uuid,
    pretty_json,
    run_link,
    status_badge,
)
from runs.choices import RunStatus
from runs.legacy import LEGACY_ERROR_CODE
from runs.models import AgentJob, AgentRun, AgentRunMetric, RunStep, ToolExecution

# Re-exported: orchestration/admin_config.py and the tests import them from here.
__all__ = [
    "TIMESTAMPS",
    "LargeTablePaginator",
    "RecordAdmin",
    "deferring_changelist",
    "duration_text",
    "parse_uuid",
    "pretty_json",
    "run_link",
    "status_badge",
]

TIMESTAMPS = ("created_at", "updated_at")
# Big JSON and text columns a run list never shows.
LIST_DEFERRED = ("input", "output", "metrics", "meta", "objective")


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


# Codes a run can end with that the runs app itself writes; the orchestration layer,
# which writes the others, re-registers the admin with its own list (no DISTINCT scan).
RUN_ERROR_CODES = ("CANCELLED", LEGACY_ERROR_CODE)
# The statuses a run with an error code has ended in.
ENDED_WITH_ERROR = (RunStatus.FAILED, RunStatus.CANCELLED)


class ErrorCodeFilter(admin.SimpleListFilter):
    """A fixed list of codes: listing the codes present would scan the whole table."""

    title = "error code"
    parameter_name = "error_code"

    def lookups(self, request, model_admin):
        return [(code, code) for code in model_admin.error_codes]

    def queryset(self, request, queryset):
        if self.value():
            # The status condition is run_error_created_idx's: it lets the index serve.
            return queryset.filter(status__in=ENDED_WITH_ERROR, error_code=self.value())
        return queryset


@admin.register(AgentRun)
class AgentRunAdmin(RecordAdmin):
    list_display = (
        "id",
        "status_badge",
        "intent",
        "agent",
        "organization",
        "error_code",
        "node_id",
        "duration",
        "started_at",
        "created_at",
    )
    list_filter = (
        "status",
        ErrorCodeFilter,
        ("organization", ScopedRelatedFieldListFilter),
        ("agent", ScopedRelatedFieldListFilter),
    )
    list_select_related = ("agent", "organization")
    # Only orderings an index serves: sorting a million rows by intent is a full sort.
    sortable_by = ("created_at",)
    # The id is matched in get_search_results: a UUID term that is not one would
    # otherwise fail validation instead of finding nothing.
    search_fields = ("idempotency_key__exact", "error_message")
    date_hierarchy = "created_at"
    raw_id_fields = ("organization", "agent", "dataset", "user", "retry_of")
    inlines = (AgentRunMetricInline, ToolExecutionInline, RunStepInline)
    actions = ("cancel_runs",)
    error_codes: tuple[str, ...] = RUN_ERROR_CODES
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "status_badge",
                    "organization",
                    "agent",
                    "intent",
                    "error_code",
                    "error_message",
                    "objective",
                    "dataset",
                    "user",
                )
            },
        ),
        ("Timeline", {"fields": ("timeline", "policy_decisions")}),
        (
            "Execution",
            {
                "fields": (
                    "node_id",
                    "attempt",
                    "retry_of_link",
                    "idempotency_key",
                    "input_hash",
                    "queued_at",
                    "started_at",
                    "completed_at",
                    "duration",
                    "lease_expires_at",
                    "cancel_requested_at",
                    *TIMESTAMPS,
                )
            },
        ),
        ("Data", {"fields": ("input_json", "output_json", "metrics_json", "meta_json")}),
    )
    readonly_fields = (
        "id",
        "status_badge",
        "timeline",
        "policy_decisions",
        "retry_of_link",
        "duration",
        *TIMESTAMPS,
        "input_json",
        "output_json",
        "metrics_json",
        "meta_json",
    )

    def get_changelist(self, request: HttpRequest, **kwargs) -> type[ChangeList]:
        return deferring_changelist(LIST_DEFERRED)

    def get_object(self, request: HttpRequest, object_id: str, from_field=None):
        # The detail page shows these relations: one join instead of one query each.
        queryset = self.get_queryset(request).select_related(
            "agent", "organization", "dataset", "user"
        )
        try:
            return queryset.get(pk=uuid.UUID(str(object_id)))
        except (AgentRun.DoesNotExist, ValueError):
            return None

    def get_search_results(self, request, queryset, search_term):
        run_id = parse_uuid(search_term)
        if run_id is None:
            return super().get_search_results(request, queryset, search_term)
        # Clients often use UUIDs as idempotency keys too.
        return queryset.filter(Q(pk=run_id) | Q(idempotency_key=search_term.strip())), False

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: AgentRun) -> str:
        return status_badge(obj.status, obj.get_status_display())

    @admin.display(description="duration")
    def duration(self, obj: AgentRun) -> str:
        return duration_text(obj.duration_ms)

    @admin.display(description="retry of")
    def retry_of_link(self, obj: AgentRun) -> str:
        return run_link(obj.retry_of_id)

    @admin.display(description="timeline")
    def timeline(self, obj: AgentRun) -> str:
        steps = RunStep.objects.filter(run_id=obj.pk).only(
            "run_id", "position", "name", "status", "started_at", "duration_ms", "error"
        )
        return format_html(
            '<ol class="run-timeline">{}</ol>',
            format_html_join(
                "", "<li><code>{}</code> {} <span>{}</span></li>", run_timeline(obj, steps)
            ),
        )

    @admin.display(description="policy decisions")
    def policy_decisions(self, obj: AgentRun) -> str:
        decisions = (obj.meta or {}).get("policies") or []
        if not decisions:
            return "No policy acted on this run (no retry, timeout or circuit decision)."
        rows = []
        for decision in decisions:
            detail = ", ".join(f"{k}={v}" for k, v in decision.items() if k != "policy")
            rows.append((decision.get("policy", "?"), detail))
        return format_html(
            '<ul class="run-policies">{}</ul>',
            format_html_join("", "<li><strong>{}</strong>: {}</li>", rows),
        )

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

    @admin.action(description="Cancel selected runs", permissions=["operate"])
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[AgentRun]) -> None:
        cancelled, asked, ended = 0, 0, 0
        allowed = scope_queryset(queryset, request, OPERATE).defer(*LIST_DEFERRED)
        for run in allowed:
            try:
                run = services.run_cancel(run=run)
            except services.RunNotActive:
                ended += 1
                continue
            if run.status == RunStatus.CANCELLED:
                cancelled += 1
            else:
                asked += 1
        if cancelled:
            self.message_user(request, f"Cancelled {cancelled} pending run(s).")
        if asked:
            self.message_user(request, f"Asked {asked} running run(s) to stop.")
        if ended:
            self.message_user(request, f"{ended} run(s) had already ended.", level=messages.WARNING)
        refused = queryset.count() - allowed.count() if not request.user.is_superuser else 0
        if refused:
            self.message_user(
                request, f"{refused} run(s) skipped: your role may not.", level=messages.WARNING
            )


def run_timeline(run: AgentRun, steps) -> list[tuple[str, str, str]]:
    """(when, what, detail) from queued to completed, the steps in between."""

    def at(moment) -> str:
        return moment.isoformat(sep=" ", timespec="milliseconds") if moment else "-"

    events = [(at(run.queued_at or run.created_at), "queued", f"intent {run.intent}")]
    if run.started_at:
        node = f" on {run.node_id}" if run.node_id else ""
        events.append((at(run.started_at), "started", f"attempt {run.attempt}{node}"))
    for step in steps:
        detail = f"{step.status}, {duration_text(step.duration_ms)}"
        if step.error:
            detail += f": {step.error[:200]}"
        events.append((at(step.started_at), f"step {step.position}: {step.name}", detail))
    if run.cancel_requested_at:
        events.append((at(run.cancel_requested_at), "cancel requested", ""))
    if run.completed_at:
        detail = run.error_code or ""
        if run.error_message:
            detail += f" {run.error_message[:200]}"
        events.append((at(run.completed_at), run.status.lower(), detail.strip()))
    return events


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
    list_filter = ("status", ("organization", ScopedRelatedFieldListFilter))
    list_select_related = ("organization",)
    search_fields = ("agent_name", "created_by")
    raw_id_fields = ("organization",)
    readonly_fields = TIMESTAMPS

    def get_changelist(self, request: HttpRequest, **kwargs) -> type[ChangeList]:
        return deferring_changelist(("input", "output", "metrics"))
