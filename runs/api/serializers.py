from __future__ import annotations

from rest_framework import serializers

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


class RunListSerializer(serializers.ModelSerializer):
    agent = serializers.CharField(source="agent.name", read_only=True)
    agent_slug = serializers.CharField(source="agent.slug", read_only=True)

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
