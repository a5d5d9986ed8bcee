from __future__ import annotations

from datetime import datetime, tzinfo

from django.conf import settings
from django.utils import timezone
from rest_framework import ISO_8601, serializers
from rest_framework.settings import api_settings

from runs.models import AgentRun, AgentRunMetric, RunStep, ToolExecution


class RunMetricSerializer(serializers.ModelSerializer):
    class Meta:
        model = AgentRunMetric
        fields = ["name", "value", "metadata", "created_at"]


class ToolExecutionSerializer(serializers.ModelSerializer):
    tool = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = ToolExecution
        fields = [
            "id",
            "tool",
            "call_id",
            "status",
            "input",
            "output",
            "error",
            "metadata",
            "started_at",
            "completed_at",
            "duration_ms",
        ]


class RunStepSerializer(serializers.ModelSerializer):
    class Meta:
        model = RunStep
        fields = [
            "id",
            "name",
            "status",
            "position",
            "payload",
            "result",
            "error",
            "started_at",
            "completed_at",
            "duration_ms",
        ]


def _iso_datetime(value: datetime | None, zone: tzinfo) -> str | None:
    """What DRF's DateTimeField renders with USE_TZ and the ISO 8601 format."""
    if not value:
        return None
    text = value.astimezone(zone).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class RunListSerializer(serializers.ModelSerializer):
    agent = serializers.CharField(source="agent.name", read_only=True)
    agent_slug = serializers.CharField(source="agent.slug", read_only=True)

    def to_representation(self, run: AgentRun) -> dict:
        """Exactly the dict DRF's per-field path builds for these fields, built directly.

        The run list is the API's hottest read: DRF's generic path (a field object, a
        get_attribute and a to_representation per value) costs ~0.2 ms per run, most of a
        50-run page's time. tests/runs/test_read_endpoints_at_scale.py pins the equality.
        """
        if not settings.USE_TZ or str(api_settings.DATETIME_FORMAT).lower() != ISO_8601:
            return super().to_representation(run)
        zone = timezone.get_current_timezone()
        return {
            "id": str(run.id),
            "agent": str(run.agent.name),
            "agent_slug": str(run.agent.slug),
            "intent": str(run.intent),
            "status": str(run.status),
            "objective": str(run.objective),
            "error_code": str(run.error_code),
            "error_message": str(run.error_message),
            "attempt": int(run.attempt),
            "node_id": str(run.node_id),
            "idempotency_key": None if run.idempotency_key is None else str(run.idempotency_key),
            "retry_of": run.retry_of_id,
            "metrics": run.metrics,
            "created_at": _iso_datetime(run.created_at, zone),
            "queued_at": _iso_datetime(run.queued_at, zone),
            "started_at": _iso_datetime(run.started_at, zone),
            "completed_at": _iso_datetime(run.completed_at, zone),
            "duration_ms": None if run.duration_ms is None else int(run.duration_ms),
        }

    class Meta:
        model = AgentRun
        fields = [
            "id",
            "agent",
            "agent_slug",
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
            "created_at",
            "queued_at",
            "started_at",
            "completed_at",
            "duration_ms",
        ]
        read_only_fields = fields


class RunDetailSerializer(RunListSerializer):
    dataset = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    # One run at a time: DRF's generic path, field by field.
    to_representation = serializers.ModelSerializer.to_representation
    metric_rows = RunMetricSerializer(many=True, read_only=True)
    tool_executions = ToolExecutionSerializer(many=True, read_only=True)
    steps = RunStepSerializer(many=True, read_only=True)

    class Meta(RunListSerializer.Meta):
        fields = [
            *RunListSerializer.Meta.fields,
            "dataset",
            "input",
            "output",
            "input_hash",
            "meta",
            "cancel_requested_at",
            "metric_rows",
            "tool_executions",
            "steps",
        ]
        read_only_fields = fields
