from __future__ import annotations

from django.db.models import Q, QuerySet
from rest_framework import serializers

from config.serializers import SentLengthMixin
from runs.choices import RunStatus


class RunFilterSerializer(SentLengthMixin, serializers.Serializer):
    """Query parameters of GET /api/runs/; bad values answer 400 INVALID_REQUEST."""

    status = serializers.ChoiceField(choices=RunStatus.choices, required=False)
    agent = serializers.CharField(required=False, max_length=120, help_text="Agent slug or name.")
    intent = serializers.CharField(required=False, max_length=120)
    since = serializers.DateTimeField(required=False, help_text="Created at or after (ISO 8601).")
    until = serializers.DateTimeField(required=False, help_text="Created before (ISO 8601).")


def run_filter(queryset: QuerySet, params: dict) -> QuerySet:
    if "status" in params:
        queryset = queryset.filter(status=params["status"])
    if "agent" in params:
        queryset = queryset.filter(Q(agent__slug=params["agent"]) | Q(agent__name=params["agent"]))
    if "intent" in params:
        queryset = queryset.filter(intent=params["intent"])
    if "since" in params:
        queryset = queryset.filter(created_at__gte=params["since"])
    if "until" in params:
        queryset = queryset.filter(created_at__lt=params["until"])
    return queryset
