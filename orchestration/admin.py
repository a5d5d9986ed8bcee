"""The operators' console for how work runs: the node fleet, the event log, configuration."""

from __future__ import annotations

from datetime import UTC, datetime

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from agents.admin_definitions import (
    AgentAdmin,
    AgentCapabilityInline,
    AgentConfigInline,
    AgentForm,
    ToolInline,
)
from agents.admin_scope import EDIT, ScopedRelatedFieldListFilter, scope_queryset
from agents.choices import AgentStatus
from agents.models import Agent
from orchestration import console
from orchestration.choices import NodeStatus
from orchestration.models import OrchestratorConfigRevision, OrchestratorEvent, OrchestratorNode
from orchestration.policies import CircuitState, PolicyStoreUnavailable, policy_store
from orchestration.services.agent_config_schema import HTTP_HANDLER, agent_config_errors
from orchestration.services.circuits import circuit_force, circuit_list
from orchestration.services.nodes import (
    NodeNotFound,
    NodeStateConflict,
    node_drain,
    node_unregister,
)
from orchestration.services.reaper import node_failover
from runs.admin import TIMESTAMPS
from runs.admin_records import (
    LargeTablePaginator,
    RecordAdmin,
    deferring_changelist,
    duration_text,
    parse_uuid,
    pretty_json,
    run_link,
    status_badge,
)
from runs.models import AgentRun

NODE_STATUS_COLORS = {
    NodeStatus.ACTIVE: "#15803d",
    NodeStatus.DRAINING: "#a16207",
    NodeStatus.UNHEALTHY: "#c2410c",
    NodeStatus.FAILED: "#b91c1c",
    NodeStatus.OFFLINE: "#6b7280",
}
RECENT_RUNS = 10


@admin.register(OrchestratorNode)
class OrchestratorNodeAdmin(admin.ModelAdmin):
    """Nodes register and heartbeat themselves, so their rows are not edited here.

    Deleting the row of a node that is gone for good is allowed; a live node would
    simply register again.
    """

    list_display = (
        "node_id",
        "status_badge",
        "region",
        "capacity",
        "active_runs",
        "cpu_utilization",
        "memory_utilization",
        "version",
        "last_heartbeat_at",
        "heartbeat_age",
    )
    list_filter = ("status", "region")
    search_fields = ("node_id", "endpoint", "version")
    readonly_fields = ("registered_at", "last_heartbeat_at", *TIMESTAMPS)
    actions = ("drain_nodes", "fail_over_nodes", "remove_nodes")

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """The actions: staff who may see nodes may steer them (the rows stay read-only)."""
        return request.user.is_staff and self.has_view_permission(request)

    def get_urls(self):
        # The console's JSON endpoint hangs off the fleet's admin: it needs an admin URL
        # (login, staff check) and the site itself stays django.contrib.admin.site.
        return [*console.admin_urls(self.admin_site), *super().get_urls()]

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: OrchestratorNode) -> str:
        return format_html(
            '<span class="node-status" style="background:{};color:#fff;padding:1px 7px;'
            'border-radius:9px;font-size:11px">{}</span>',
            NODE_STATUS_COLORS.get(obj.status, "#6b7280"),
            obj.get_status_display(),
        )

    def _each_node(self, request: HttpRequest, queryset, action, verb: str) -> None:
        done, refused = [], []
        for node_id in queryset.values_list("node_id", flat=True):
            try:
                action(node_id)
            except (NodeNotFound, NodeStateConflict) as exc:
                refused.append(str(exc))
            else:
                done.append(node_id)
        if done:
            self.message_user(request, f"{verb} {len(done)} node(s): {', '.join(done)}.")
        for reason in refused:
            self.message_user(request, reason, level=messages.WARNING)

    @admin.action(description="Drain (take no new work)", permissions=["operate"])
    def drain_nodes(self, request: HttpRequest, queryset) -> None:
        self._each_node(request, queryset, lambda node_id: node_drain(node_id=node_id), "Drained")

    @admin.action(
        description="Fail over (move their runs to a backup node)", permissions=["operate"]
    )
    def fail_over_nodes(self, request: HttpRequest, queryset) -> None:
        actor = f"admin:{request.user.pk}"
        results = []

        def fail_over(node_id: str) -> None:
            results.append(node_failover(node_id=node_id, reason=f"requested by {actor}"))

        self._each_node(request, queryset, fail_over, "Failed over")
        for result in results:
            self.message_user(request, result.message)

    @admin.action(description="Remove (unregister: OFFLINE)", permissions=["operate"])
    def remove_nodes(self, request: HttpRequest, queryset) -> None:
        actor = f"admin:{request.user.pk}"
        self._each_node(
            request,
            queryset,
            lambda node_id: node_unregister(node_id=node_id, reason=f"removed by {actor}"),
            "Removed",
        )

    @admin.display(description="heartbeat age", ordering="-last_heartbeat_at")
    def heartbeat_age(self, obj: OrchestratorNode) -> str:
        seconds = int((timezone.now() - obj.last_heartbeat_at).total_seconds())
        return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min"


@admin.register(OrchestratorEvent)
class OrchestratorEventAdmin(RecordAdmin):
    list_display = (
        "id",
        "type",
        "organization",
        "agent_link",
        "run_id_link",
        "node_id",
        "created_at",
    )
    # EventType is a closed list, so the type filter needs no DISTINCT over the log.
    list_filter = ("type", ("organization", ScopedRelatedFieldListFilter))
    sortable_by = ("id",)
    # Not "run": its row carries the run's input and output, and only the id is shown.
    list_select_related = ("organization", "agent")
    search_fields = ("node_id__exact",)
    raw_id_fields = ("organization", "agent", "run")
    # Newest first for people; the model orders oldest first for clients resuming "after N".
    ordering = ("-id",)
    paginator = LargeTablePaginator
    readonly_fields = ("created_at", "payload_json")
    exclude = ("payload",)

    def get_changelist(self, request: HttpRequest, **kwargs) -> type[ChangeList]:
        return deferring_changelist(("payload",))

    @admin.display(description="run", ordering="run_id")
    def run_id_link(self, obj: OrchestratorEvent) -> str:
        return run_link(obj.run_id)

    @admin.display(description="agent")
    def agent_link(self, obj: OrchestratorEvent) -> str:
        return agent_link(obj.agent)

    @admin.display(description="payload")
    def payload_json(self, obj: OrchestratorEvent) -> str:
        return pretty_json(obj.payload)

    def get_search_results(self, request, queryset, search_term):
        run_id = parse_uuid(search_term)
        if run_id is None:
            return super().get_search_results(request, queryset, search_term)
        return queryset.filter(run_id=run_id), False


@admin.register(OrchestratorConfigRevision)
class OrchestratorConfigRevisionAdmin(RecordAdmin):
    """History of the live configuration; changes go through the configuration API."""

    list_display = ("created_at", "created_by", "comment")
    list_select_related = ("created_by",)
    search_fields = ("comment",)
    raw_id_fields = ("created_by",)
    fields = ("created_at", "created_by", "comment", "document_json", "diff_json")
    readonly_fields = ("created_at", "document_json", "diff_json")

    def get_changelist(self, request: HttpRequest, **kwargs) -> type[ChangeList]:
        return deferring_changelist(("document", "diff"))

    @admin.display(description="document")
    def document_json(self, obj: OrchestratorConfigRevision) -> str:
        return pretty_json(obj.document)

    @admin.display(description="diff")
    def diff_json(self, obj: OrchestratorConfigRevision) -> str:
        return pretty_json(obj.diff)


def agent_link(agent: Agent | None) -> str:
    if agent is None:
        return "-"
    url = reverse("admin:agents_agent_change", args=[agent.pk])
    return format_html('<a href="{}">{}</a>', url, agent.name)


def config_messages(errors: list[tuple[str, str]]) -> list[str]:
    return [f"{path}: {message}" for path, message in errors]


class AgentConfigForm(AgentForm):
    """The agent form, with its config JSON checked against what the orchestrator reads."""

    def clean(self):
        cleaned = super().clean()
        config = cleaned.get("config")
        if "config" in cleaned and not self.has_error("config"):
            # An http agent's url may come from a config row instead: the rows' formset
            # checks the assembled config for it.
            errors = agent_config_errors(
                config if config is not None else {},
                handler=cleaned.get("handler") or "",
                require_url=False,
            )
            if errors:
                self.add_error("config", forms.ValidationError(config_messages(errors)))
        return cleaned


class AgentConfigEntryFormSet(BaseInlineFormSet):
    """Each row overrides one top-level key of the agent's config, and is checked as such.

    The config the orchestrator uses is the JSON with the rows laid over it
    (agent_effective_config), so only here can an ACTIVE http agent be required to
    have a url, wherever it is set.
    """

    def clean(self) -> None:
        super().clean()
        agent = self.instance
        handler = agent.handler or ""
        effective = dict(agent.config) if isinstance(agent.config, dict) else {}
        rows_valid = True
        for form in self.forms:
            cleaned = getattr(form, "cleaned_data", None) or {}
            key = cleaned.get("key")
            if not key or cleaned.get("DELETE"):
                continue
            errors = agent_config_errors(
                {key: cleaned.get("value")}, handler=handler, require_url=False
            )
            if errors:
                form.add_error("value", forms.ValidationError(config_messages(errors)))
                rows_valid = False
            effective[key] = cleaned.get("value")
        if rows_valid and handler == HTTP_HANDLER and agent.status == AgentStatus.ACTIVE:
            errors = agent_config_errors(effective, handler=handler, require_url=True)
            missing_url = [(path, message) for path, message in errors if path == "url"]
            if missing_url:
                raise forms.ValidationError(config_messages(missing_url))


class ValidatedAgentConfigInline(AgentConfigInline):
    formset = AgentConfigEntryFormSet


class AgentWithCircuitAdmin(AgentAdmin):
    """The agent editor plus what the orchestration layer knows about the agent.

    Its circuit (state on the page, force actions in the list), its recent runs, and its
    config validated against the orchestrator's schema. Registered here rather than in
    agents/admin.py because all three belong to the orchestration layer, which may
    depend on agents but not the other way round.
    """

    form = AgentConfigForm
    inlines = (AgentCapabilityInline, ValidatedAgentConfigInline, ToolInline)
    actions = (*AgentAdmin.actions, "force_open", "force_close", "release_circuit")

    class Media:
        css = {"all": ("orchestration/console.css",)}  # the recent runs table

    def get_readonly_fields(self, request: HttpRequest, obj=None):
        fields = super().get_readonly_fields(request, obj)
        return (*fields, "circuit", "recent_runs") if obj is not None else fields

    def get_fieldsets(self, request: HttpRequest, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None:
            return fieldsets
        return (
            *fieldsets,
            ("Circuit", {"fields": ("circuit",)}),
            ("Recent runs", {"fields": ("recent_runs",)}),
        )

    @admin.display(description="circuit")
    def circuit(self, obj: Agent) -> str:
        try:
            item = circuit_list(agents=[obj])[0]
        except PolicyStoreUnavailable as exc:
            return f"unknown: the policy store is unreachable ({exc})"
        s = item.snapshot
        parts = [s.state]
        if s.opened_at:
            opened = datetime.fromtimestamp(s.opened_at, tz=UTC).isoformat(timespec="seconds")
            parts.append(f"opened {opened}")
        parts.append(f"{s.consecutive_failures} consecutive failures")
        parts.append(f"{s.window_failures}/{s.window_calls} failed in window")
        if s.probes_in_flight:
            parts.append(f"{s.probes_in_flight} probe(s) in flight")
        parts.append(f"store: {policy_store().backend}")
        return " · ".join(parts)

    @admin.display(description="last runs")
    def recent_runs(self, obj: Agent) -> str:
        # run_agent_created_idx: this agent's newest runs, however many it has.
        runs = (
            AgentRun.objects.filter(agent_id=obj.pk)
            .order_by("-created_at")
            .only("id", "status", "intent", "error_code", "duration_ms", "created_at")[:RECENT_RUNS]
        )
        rows = [
            (
                reverse("admin:runs_agentrun_change", args=[run.pk]),
                run.pk,
                status_badge(run.status, run.get_status_display()),
                run.intent,
                run.error_code or "",
                duration_text(run.duration_ms),
                run.created_at.isoformat(sep=" ", timespec="seconds"),
            )
            for run in runs
        ]
        if not rows:
            return "No run yet."
        everything = reverse("admin:runs_agentrun_changelist") + f"?agent__id__exact={obj.pk}"
        return format_html(
            '<table class="recent-runs"><thead><tr><th>run</th><th>status</th><th>intent</th>'
            "<th>error</th><th>duration</th><th>created</th></tr></thead><tbody>{}</tbody>"
            '</table><p><a href="{}">All runs of this agent</a></p>',
            format_html_join(
                "",
                '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td>'
                "<td>{}</td><td>{}</td></tr>",
                rows,
            ),
            everything,
        )

    def _force(self, request: HttpRequest, queryset, state: str | None, verb: str) -> None:
        # Forcing a circuit needs the right to edit the agent (agents:write), as over the API.
        agents = list(scope_queryset(queryset, request, EDIT).select_related("organization"))
        done = 0
        try:
            for agent in agents:
                circuit_force(agent=agent, state=state, actor=f"admin:{request.user.pk}")
                done += 1
        except PolicyStoreUnavailable as exc:
            changed = ", ".join(a.slug for a in agents[:done]) or "none"
            self.message_user(
                request,
                f"The policy store is unreachable ({exc}); {verb.lower()} {done} of"
                f" {len(agents)} agent(s) before it failed: {changed}.",
                messages.ERROR,
            )
            return
        self.message_user(request, f"{verb} the circuit of {len(agents)} agent(s).")

    @admin.action(description="Force circuit OPEN (reject all calls)", permissions=["change"])
    def force_open(self, request: HttpRequest, queryset) -> None:
        self._force(request, queryset, CircuitState.OPEN, "Forced open")

    @admin.action(description="Force circuit CLOSED (admit all calls)", permissions=["change"])
    def force_close(self, request: HttpRequest, queryset) -> None:
        self._force(request, queryset, CircuitState.CLOSED, "Forced closed")

    @admin.action(description="Release a forced circuit", permissions=["change"])
    def release_circuit(self, request: HttpRequest, queryset) -> None:
        self._force(request, queryset, None, "Released")


admin.site.unregister(Agent)
admin.site.register(Agent, AgentWithCircuitAdmin)
from orchestration import admin_config, admin_runs  # noqa: E402,F401
