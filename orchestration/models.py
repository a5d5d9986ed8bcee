from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from agents.models import Agent, BaseModel, Organization
from agents.models.base import choices_check
from orchestration.choices import EventType, NodeStatus
from runs.models import AgentRun


class OrchestratorNode(BaseModel):
    """An API process or Celery worker that takes work; it names itself by node_id."""

    node_id = models.CharField(max_length=255, unique=True)
    region = models.CharField(max_length=64, default="local")
    endpoint = models.CharField(max_length=500, blank=True, default="")
    capabilities = models.JSONField(default=list, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=NodeStatus.choices, default=NodeStatus.ACTIVE)
    capacity = models.PositiveIntegerField(default=1)
    active_runs = models.PositiveIntegerField(default=0)
    cpu_utilization = models.FloatField(default=0.0)
    memory_utilization = models.FloatField(default=0.0)
    version = models.CharField(max_length=64, blank=True, default="")
    last_heartbeat_at = models.DateTimeField(default=timezone.now)
    registered_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "orchestrator_nodes"
        ordering = ["node_id"]
        constraints = [choices_check("status", NodeStatus, "node_status_valid")]
        indexes = [
            # Heartbeat expiry sweep and routing: live nodes by status and freshness.
            models.Index(fields=["status", "last_heartbeat_at"], name="node_status_heartbeat_idx"),
        ]

    def __str__(self) -> str:
        return self.node_id


class OrchestratorEvent(models.Model):
    """The bus's durable log. A monotonically increasing id lets clients resume "after N"."""

    id = models.BigAutoField(primary_key=True)
    type = models.CharField(max_length=64, choices=EventType.choices)
    # Indexed by event_org_id_idx (organization, id), which serves its lookups too.
    organization = models.ForeignKey(
        Organization,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="events",
        db_index=False,
    )
    agent = models.ForeignKey(
        Agent, on_delete=models.SET_NULL, null=True, blank=True, related_name="events"
    )
    run = models.ForeignKey(
        AgentRun, on_delete=models.SET_NULL, null=True, blank=True, related_name="events"
    )
    node_id = models.CharField(max_length=255, blank=True, default="")
    payload = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "orchestrator_events"
        ordering = ["id"]
        constraints = [choices_check("type", EventType, "event_type_valid")]
        indexes = [
            # GET /api/orchestration/events?after=N for one organization.
            models.Index(fields=["organization", "id"], name="event_org_id_idx"),
            # The same, filtered by type.
            models.Index(fields=["type", "id"], name="event_type_id_idx"),
            # Retention: prune_events deletes the oldest rows in batches.
            models.Index(fields=["created_at"], name="event_created_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.id} {self.type}"


class OrchestratorConfigRevision(BaseModel):
    """Every change of the live configuration; the newest row is the one in force."""

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    document = models.JSONField()
    diff = models.JSONField(default=dict, blank=True)
    comment = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        db_table = "orchestrator_config_revisions"
        ordering = ["-created_at"]
        indexes = [
            # The live configuration: the newest revision.
            models.Index(fields=["-created_at"], name="config_revision_newest_idx"),
        ]

    def __str__(self) -> str:
        return f"revision {self.created_at:%Y-%m-%d %H:%M:%S}"
