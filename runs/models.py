from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone

from agents.models import Agent, BaseModel, Dataset, Organization, Tool
from agents.models.base import choices_check
from runs.choices import (
    RUN_TRANSITIONS,
    TERMINAL_RUN_STATES,
    RunStatus,
    StepStatus,
    ToolExecutionStatus,
)


class InvalidRunTransition(Exception):
    """Raised when a run is asked to move to a status its current one cannot reach."""

    def __init__(self, run_id, current: str, target: str) -> None:
        super().__init__(f"run {run_id}: {current} -> {target} is not a legal transition")
        self.current = current
        self.target = target


class AgentRun(BaseModel):
    """One orchestrated request and everything known about its outcome."""

    # Every index of this table is written by each run's insert and by its claim and finish
    # (they change indexed columns, so no update is HOT): no foreign key gets an index of
    # its own. The organization's and the agent's lead composite indexes below, which
    # serve their lookups (and a cascade) as well; the optional references have partial
    # indexes holding only the runs that have one (most runs have none).
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="runs", db_index=False
    )
    # PROTECT: deleting a definition must not erase the record of what it did.
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="runs", db_index=False)
    dataset = models.ForeignKey(
        Dataset,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="runs",
        db_index=False,
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="agent_runs",
        db_index=False,
    )
    retry_of = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="retries",
        db_index=False,
    )
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.PENDING)
    intent = models.CharField(max_length=120)
    objective = models.TextField(blank=True, default="")
    input = models.JSONField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    meta = models.JSONField(default=dict, blank=True)
    input_hash = models.CharField(max_length=64, blank=True, default="")
    error_code = models.CharField(max_length=64, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    # Which orchestrator node holds (or last held) the run; a node id, not a foreign key,
    # because nodes come and go while the record of the run stays.
    node_id = models.CharField(max_length=255, blank=True, default="")
    attempt = models.PositiveIntegerField(default=0)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        db_table = "agent_runs"
        ordering = ["-created_at"]
        constraints = [
            choices_check("status", RunStatus, "run_status_valid"),
            models.UniqueConstraint(
                fields=["organization", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="run_idempotency_key_unique_per_org",
            ),
        ]
        indexes = [
            # The optional references, for their lookups and ON DELETE SET NULL: partial,
            # so a run without one (most) writes nothing to them.
            models.Index(
                fields=["dataset"],
                condition=models.Q(dataset__isnull=False),
                name="run_dataset_idx",
            ),
            models.Index(
                fields=["user"], condition=models.Q(user__isnull=False), name="run_user_idx"
            ),
            models.Index(
                fields=["retry_of"],
                condition=models.Q(retry_of__isnull=False),
                name="run_retry_of_idx",
            ),
            # An agent's run history and its per-agent latency figures.
            models.Index(fields=["agent", "started_at"], name="run_agent_started_idx"),
            # Status-filtered run lists and dashboards of one organization.
            models.Index(
                fields=["organization", "status", "started_at"], name="run_org_status_started_idx"
            ),
            # GET /api/runs/: one organization's runs, newest first, in exactly the cursor
            # pagination's order (created_at, then id to break ties), so a page is a range
            # read of this index at any depth and in any tenant, with no sort. Also the
            # organization-scoped time windows of GET /api/orchestration/metrics.
            models.Index(
                fields=["organization", "-created_at", "-id"], name="run_org_created_id_idx"
            ),
            # Fleet-wide time windows: GET /api/orchestration/metrics (runs of the last hour
            # and 24 h) and scaling_evaluate (request rate of the last minute, p95).
            models.Index(fields=["created_at"], name="run_created_idx"),
            # The few non-terminal runs, fleet-wide: backlog and active counts (metrics,
            # scaling), runs stuck past their lease (health). Partial, so it stays small.
            models.Index(
                fields=["status", "created_at"],
                condition=models.Q(status__in=[RunStatus.PENDING, RunStatus.RUNNING]),
                name="run_active_status_idx",
            ),
            # An agent's newest runs: the agent page's recent runs and the run list
            # filtered by agent (admin), newest first.
            models.Index(fields=["agent", "created_at"], name="run_agent_created_idx"),
            # The run list filtered by status, newest first (admin), and the console's
            # latest failures; the partial run_active_status_idx covers only active runs.
            models.Index(fields=["status", "created_at"], name="run_status_created_idx"),
            # The run list filtered by error code (admin), newest first. Only runs that
            # ended with one carry a code, so the index holds those alone.
            models.Index(
                fields=["error_code", "created_at"],
                condition=models.Q(status__in=[RunStatus.FAILED, RunStatus.CANCELLED]),
                name="run_error_created_idx",
            ),
            # A node's recently finished runs: the latency estimate of POST route.
            models.Index(fields=["node_id", "completed_at"], name="run_node_completed_idx"),
            # A node's in-flight runs: node_heartbeat extends their leases, the node
            # runtime counts them (its active runs), node_failover moves them. Partial, so
            # it holds only the few active rows, never the history.
            models.Index(
                fields=["node_id", "status"],
                condition=models.Q(status__in=[RunStatus.PENDING, RunStatus.RUNNING]),
                name="run_active_node_idx",
            ),
            # runs_reap: RUNNING runs whose lease ran out (their node stopped heartbeating).
            models.Index(
                fields=["lease_expires_at"],
                condition=models.Q(status=RunStatus.RUNNING),
                name="run_running_lease_idx",
            ),
            # runs_reap: PENDING runs nobody picked up within pending_timeout_s.
            models.Index(
                fields=["queued_at"],
                condition=models.Q(status=RunStatus.PENDING),
                name="run_pending_queued_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.intent} {self.id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_RUN_STATES

    def can_transition_to(self, target: str) -> bool:
        return target in RUN_TRANSITIONS[self.status]

    def _transition(self, target: str, **fields) -> list[str]:
        if not self.can_transition_to(target):
            raise InvalidRunTransition(self.pk, self.status, target)
        self.status = target
        for name, value in fields.items():
            setattr(self, name, value)
        return ["status", "updated_at", *fields]

    def _finish_fields(self, now: datetime) -> dict:
        duration = None
        if self.started_at is not None:
            duration = max(0, int((now - self.started_at).total_seconds() * 1000))
        return {"completed_at": now, "duration_ms": duration, "lease_expires_at": None}

    def mark_running(self, *, node_id: str = "", now: datetime | None = None) -> list[str]:
        now = now or timezone.now()
        return self._transition(
            RunStatus.RUNNING, node_id=node_id, started_at=now, attempt=self.attempt + 1
        )

    def mark_succeeded(self, *, output, now: datetime | None = None) -> list[str]:
        now = now or timezone.now()
        return self._transition(RunStatus.SUCCESS, output=output, **self._finish_fields(now))

    def mark_failed(
        self, *, error_code: str, error_message: str, now: datetime | None = None
    ) -> list[str]:
        now = now or timezone.now()
        return self._transition(
            RunStatus.FAILED,
            error_code=error_code,
            error_message=error_message,
            **self._finish_fields(now),
        )

    def mark_cancelled(self, *, now: datetime | None = None) -> list[str]:
        now = now or timezone.now()
        return self._transition(RunStatus.CANCELLED, **self._finish_fields(now))


class AgentRunMetric(BaseModel):
    run = models.ForeignKey(AgentRun, on_delete=models.CASCADE, related_name="metric_rows")
    name = models.CharField(max_length=120)
    value = models.FloatField()
    metadata = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "agent_run_metrics"
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.name}={self.value}"


class ToolExecution(BaseModel):
    # PROTECT: a tool with recorded executions is kept so its history stays readable.
    tool = models.ForeignKey(Tool, on_delete=models.PROTECT, related_name="executions")
    # No index of its own: the unique (run, tool, call_id) index below starts with run_id
    # and serves every lookup by run (one index write less per tool call).
    run = models.ForeignKey(
        AgentRun,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="tool_executions",
        db_index=False,
    )
    call_id = models.CharField(max_length=120)
    status = models.CharField(
        max_length=16, choices=ToolExecutionStatus.choices, default=ToolExecutionStatus.QUEUED
    )
    input = models.JSONField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        db_table = "tool_executions"
        ordering = ["created_at", "id"]
        constraints = [
            choices_check("status", ToolExecutionStatus, "tool_execution_status_valid"),
            # A retried call updates its row instead of duplicating it.
            models.UniqueConstraint(
                fields=["run", "tool", "call_id"], name="tool_execution_call_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tool_id}:{self.call_id} ({self.status})"


class RunStep(BaseModel):
    run = models.ForeignKey(AgentRun, on_delete=models.CASCADE, related_name="steps")
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=StepStatus.choices, default=StepStatus.RUNNING)
    position = models.PositiveIntegerField(default=0)
    payload = models.JSONField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        db_table = "run_steps"
        ordering = ["run", "position"]
        constraints = [choices_check("status", StepStatus, "run_step_status_valid")]

    def __str__(self) -> str:
        return self.name


class AgentJob(BaseModel):
    """A row of the legacy job table, kept readable; migrate_agent_jobs turns it into a run."""

    organization = models.ForeignKey(
        Organization, on_delete=models.SET_NULL, null=True, blank=True, related_name="legacy_jobs"
    )
    agent_name = models.CharField(max_length=120)
    input = models.JSONField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    # Free text: legacy rows carry statuses the new model does not know.
    status = models.CharField(max_length=32)
    error = models.TextField(blank=True, default="")
    metrics = models.JSONField(null=True, blank=True)
    created_by = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        db_table = "agent_jobs"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.agent_name} ({self.status})"
