from __future__ import annotations

import json

from django.conf import settings
from rest_framework import serializers

from config.serializers import StrictTypesMixin
from runs.choices import RunMode


class OrchestrateRequestSerializer(StrictTypesMixin, serializers.Serializer):
    """POST /api/orchestrate (API.md): camelCase as the original clients send it."""

    agent = serializers.CharField(required=False, allow_blank=False, max_length=120)
    intent = serializers.CharField(max_length=120)
    payload = serializers.JSONField(required=False, allow_null=True, default=None)
    context = serializers.DictField(required=False, default=dict)
    mode = serializers.ChoiceField(choices=RunMode.choices, required=False, default=RunMode.SYNC)
    datasetId = serializers.CharField(required=False, allow_null=True, max_length=120)
    objective = serializers.CharField(
        required=False, allow_blank=True, default="", max_length=10_000
    )

    def validate_payload(self, value):
        limit = settings.ORCHESTRATE_PAYLOAD_MAX_BYTES
        size = len(json.dumps(value, separators=(",", ":")).encode())
        if size > limit:
            raise serializers.ValidationError(
                f"The payload is {size} bytes serialized; at most {limit} are accepted."
            )
        return value


class ErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    details = serializers.JSONField(required=False)


class OrchestrateResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    status = serializers.ChoiceField(choices=["completed", "accepted", "failed"])
    agent = serializers.CharField(required=False)
    intent = serializers.CharField(required=False)
    runId = serializers.UUIDField(required=False)
    data = serializers.JSONField(required=False)
    metrics = serializers.DictField(required=False)
    error = ErrorSerializer(required=False)
    timestamp = serializers.DateTimeField()


class RunCommandResponseSerializer(serializers.Serializer):
    runId = serializers.UUIDField()
    status = serializers.CharField()
