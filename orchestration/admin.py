"""The operators' console for how work runs: the node fleet, the event log, configuration."""

from __future__ import annotations

from datetime import UTC, datetime

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.http import HttpRequest
from django.utils import timezone

from agents.admin import AgentAdmin
from agents.models import Agent
from orchestration.models import OrchestratorConfigRevision, OrchestratorEvent, OrchestratorNode
from orchestration.policies import CircuitState, PolicyStoreUnavailable, policy_store
from orchestration.services.circuits import circuit_force, circuit_list
from orchestration.services.nodes import (
    NodeNotFound,
    NodeStateConflict,
    node_drain,
    node_unregister,
)
from orchestration.services.reaper import node_failover
from runs.admin import (
    TIMESTAMPS,
    LargeTablePaginator,
    RecordAdmin,
    deferring_changelist,
    parse_uuid,
    pretty_json,
    run_link,
)


@admin.register(OrchestratorNode)
class OrchestratorNodeAdmin(admin.ModelAdmin):
    """Nodes register and heartbeat themselves, so their rows are not edited here.

    Deleting the row of a node that is gone for good is allowed; a live node would
    simply register again.
    """

    list_display = (
        "node_id",
        "status",
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
    list_display = ("id", "type", "organization", "agent", "run_id_link", "node_id", "created_at")
    list_filter = ("type",)
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


class AgentWithCircuitAdmin(AgentAdmin):
    """The agent editor plus its circuit: state on the page, force actions in the list.

    Registered here rather than in agents/admin.py because circuits belong to the
    orchestration layer, which may depend on agents but not the other way round.
    """

    actions = (*AgentAdmin.actions, "force_open", "force_close", "release_circuit")

    def get_readonly_fields(self, request: HttpRequest, obj=None):
        fields = super().get_readonly_fields(request, obj)
        return (*fields, "circuit") if obj is not None else fields

    @admin.display(description="circuit")
    def circuit(self, obj: Agent) -> str:
        item = circuit_list(agents=[obj])[0]
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

    def _force(self, request: HttpRequest, queryset, state: str | None, verb: str) -> None:
        try:
            for agent in queryset.select_related("organization"):
                circuit_force(agent=agent, state=state, actor=f"admin:{request.user.pk}")
        except PolicyStoreUnavailable as exc:
            self.message_user(
                request, f"The policy store is unreachable; nothing changed: {exc}", messages.ERROR
            )
            return
        self.message_user(request, f"{verb} the circuit of {queryset.count()} agent(s).")

    @admin.action(description="Force circuit OPEN (reject all calls)")
    def force_open(self, request: HttpRequest, queryset) -> None:
        self._force(request, queryset, CircuitState.OPEN, "Forced open")

    @admin.action(description="Force circuit CLOSED (admit all calls)")
    def force_close(self, request: HttpRequest, queryset) -> None:
        self._force(request, queryset, CircuitState.CLOSED, "Forced closed")

    @admin.action(description="Release a forced circuit")
    def release_circuit(self, request: HttpRequest, queryset) -> None:
        self._force(request, queryset, None, "Released")


admin.site.unregister(Agent)
admin.site.register(Agent, AgentWithCircuitAdmin)
from orchestration import admin_config  # noqa: E402,F401
