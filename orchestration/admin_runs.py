"""The run browser's retry action, which goes through orchestrate() like the API's.

Imported at the bottom of orchestration/admin.py: it re-registers the run admin of
runs/admin.py, which cannot import the orchestrator (runs sits below orchestration).
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from agents.admin_scope import OPERATE, scope_queryset
from agents.choices import MemberRole, Scope
from agents.principal import Principal
from orchestration.services.orchestrator import OrchestrateCommand, orchestrate
from orchestration.services.reaper import NODE_LOST, PENDING_TIMEOUT
from runs.admin import RUN_ERROR_CODES, AgentRunAdmin
from runs.choices import ACTIVE_RUN_STATES, RunMode
from runs.models import AgentRun

# Every code a run can end with: the executor's (orchestration/services/executor.py,
# execution.py), the reaper's, and the runs app's own. A fixed list, so the filter
# costs nothing however many runs there are.
ORCHESTRATION_RUN_ERROR_CODES = (
    "AGENT_EXECUTION_FAILED",
    "AGENT_NOT_REGISTERED",
    "AGENT_TIMEOUT",
    "CIRCUIT_OPEN",
    "ORCHESTRATION_FAILED",
    NODE_LOST,
    PENDING_TIMEOUT,
)


def admin_principal(*, run: AgentRun, user) -> Principal:
    """The staff user acting for the run's organization, with every scope.

    The action's permission and the organization scoping already decided that this
    user may retry this run; the principal key keeps the retry's rate-limit bucket and
    audit trail apart from the organization's API callers.
    """
    return Principal(
        organization=run.organization,
        scopes=frozenset(Scope.values),
        user=user,
        role=MemberRole.OWNER,
        principal_key=f"admin:{user.pk}",
    )


class AgentRunConsoleAdmin(AgentRunAdmin):
    actions = (*AgentRunAdmin.actions, "retry_runs")
    error_codes = tuple(sorted({*RUN_ERROR_CODES, *ORCHESTRATION_RUN_ERROR_CODES}))

    class Media:
        css = {"all": ("orchestration/console.css",)}  # the timeline and policy lists

    @admin.action(
        description="Retry selected runs (new runs of the same requests)", permissions=["operate"]
    )
    def retry_runs(self, request: HttpRequest, queryset: QuerySet[AgentRun]) -> None:
        originals = (
            scope_queryset(queryset, request, OPERATE)
            .select_related("agent", "organization")
            .defer("output", "metrics")
        )
        for original in originals:
            if original.status in ACTIVE_RUN_STATES:
                self.message_user(
                    request,
                    f"Run {original.pk} is still {original.status}; only ended runs are retried.",
                    level=messages.WARNING,
                )
                continue
            command = OrchestrateCommand(
                intent=original.intent,
                agent=original.agent.slug,
                payload=original.input,
                context=(original.meta or {}).get("context") or {},
                mode=RunMode.ASYNC,
                dataset_id=str(original.dataset_id) if original.dataset_id else None,
                objective=original.objective,
                retry_of=original,
            )
            result = orchestrate(command, admin_principal(run=original, user=request.user))
            if result.http_status < 400 and result.run is not None:
                url = reverse("admin:runs_agentrun_change", args=[result.run.pk])
                self.message_user(
                    request,
                    format_html(
                        'Retried {}: new run <a href="{}">{}</a>.', original.pk, url, result.run.pk
                    ),
                )
            else:
                error = result.body.get("error") or {}
                self.message_user(
                    request,
                    f"Run {original.pk} not retried: {error.get('code')}: {error.get('message')}",
                    level=messages.ERROR,
                )


admin.site.unregister(AgentRun)
admin.site.register(AgentRun, AgentRunConsoleAdmin)
