"""Run-scoped callbacks: a remote agent reports tool calls, metrics and steps of its run.

Authenticated by the run token (runs/tokens.py): valid for that run only, only while
it is RUNNING under the attempt the token was issued to.
"""

from __future__ import annotations

import uuid

from django.shortcuts import get_object_or_404
from django.utils.text import slugify
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.authentication_throttle import auth_failure_check, auth_failure_note
from config.serializers import StrictTypesMixin
from runs.choices import RunStatus, StepStatus, ToolExecutionStatus
from runs.models import AgentRun, AgentRunMetric, RunStep
from runs.recorder import tool_execution_upsert
from runs.tokens import TOKEN_PREFIX, RunTokenClaims, run_token_read


class RunTokenAuthentication(BaseAuthentication):
    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        parts = header.split()
        if len(parts) != 2 or parts[0].lower() != "bearer" or not parts[1].startswith(TOKEN_PREFIX):
            return None
        auth_failure_check(request)
        claims = run_token_read(parts[1])
        if claims is None:
            auth_failure_note(request)
            raise exceptions.AuthenticationFailed("Invalid run token.")
        return None, claims

    def authenticate_header(self, request) -> str:
        return "Bearer"


class RunTokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "runs.api.callbacks.RunTokenAuthentication"
    name = "runToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "The run token of one run."}


class HoldsRunToken(BasePermission):
    def has_permission(self, request, view) -> bool:
        return isinstance(request.auth, RunTokenClaims)


class ToolExecutionReportSerializer(StrictTypesMixin, serializers.Serializer):
    tool = serializers.SlugField(max_length=120)
    callId = serializers.CharField(required=False, max_length=120)
    status = serializers.ChoiceField(choices=ToolExecutionStatus.choices)
    input = serializers.JSONField(required=False, allow_null=True)
    output = serializers.JSONField(required=False, allow_null=True)
    error = serializers.CharField(required=False, allow_blank=True, max_length=10_000)
    startedAt = serializers.DateTimeField(required=False, allow_null=True)
    completedAt = serializers.DateTimeField(required=False, allow_null=True)
    durationMs = serializers.IntegerField(required=False, allow_null=True, min_value=0)
    metadata = serializers.DictField(required=False)


class MetricReportSerializer(StrictTypesMixin, serializers.Serializer):
    name = serializers.CharField(max_length=120)
    value = serializers.FloatField()
    metadata = serializers.DictField(required=False, default=dict)


class StepReportSerializer(StrictTypesMixin, serializers.Serializer):
    name = serializers.CharField(max_length=200)
    status = serializers.ChoiceField(choices=StepStatus.choices, default=StepStatus.SUCCESS)
    payload = serializers.JSONField(required=False, allow_null=True)
    result = serializers.JSONField(required=False, allow_null=True)
    error = serializers.CharField(required=False, allow_blank=True, max_length=10_000)
    startedAt = serializers.DateTimeField(required=False, allow_null=True)
    completedAt = serializers.DateTimeField(required=False, allow_null=True)
    durationMs = serializers.IntegerField(required=False, allow_null=True, min_value=0)


class RunCallbackView(APIView):
    authentication_classes = [RunTokenAuthentication]
    permission_classes = [HoldsRunToken]
    serializer_class: type[serializers.Serializer]

    def running_run(self, run_id) -> AgentRun:
        claims: RunTokenClaims = self.request.auth
        if str(run_id) != claims.run_id:
            # A token for another run: as if this run did not exist for the caller.
            raise exceptions.NotFound()
        run = get_object_or_404(
            AgentRun.objects.only("id", "organization_id", "status", "attempt"), pk=run_id
        )
        if run.status != RunStatus.RUNNING or run.attempt != claims.attempt:
            raise exceptions.PermissionDenied(
                "The run token is no longer valid: the run is not running."
            )
        return run

    def post(self, request, run_id):
        run = self.running_run(run_id)
        serializer = self.serializer_class(data=request.data)
        serializer.is_valid(raise_exception=True)
        body = self.record(run, serializer.validated_data)
        return Response(body, status=status.HTTP_201_CREATED)


class ToolExecutionCallbackView(RunCallbackView):
    serializer_class = ToolExecutionReportSerializer
    # Report field -> ToolExecution column.
    REPORTED_FIELDS = {
        "status": "status",
        "input": "input",
        "output": "output",
        "error": "error",
        "metadata": "metadata",
        "startedAt": "started_at",
        "completedAt": "completed_at",
        "durationMs": "duration_ms",
    }

    @extend_schema(request=ToolExecutionReportSerializer, responses={201: dict})
    def post(self, request, run_id):
        return super().post(request, run_id)

    def record(self, run, data) -> dict:
        call_id = data.get("callId") or uuid.uuid4().hex
        # Only what this report says: a later report of the same call (its outcome) must not
        # erase what an earlier one recorded (its input, its start). New rows take the defaults.
        fields = {
            column: data[name] for name, column in self.REPORTED_FIELDS.items() if name in data
        }
        execution = tool_execution_upsert(
            run=run,
            # The same tool as a local handler's ctx.tool(slug) (runs/recorder.py slugifies).
            slug=slugify(data["tool"]) or "tool",
            call_id=call_id,
            fields=fields,
        )
        return {"id": str(execution.pk), "callId": call_id}


class MetricCallbackView(RunCallbackView):
    serializer_class = MetricReportSerializer

    @extend_schema(request=MetricReportSerializer, responses={201: dict})
    def post(self, request, run_id):
        return super().post(request, run_id)

    def record(self, run, data) -> dict:
        metric = AgentRunMetric.objects.create(
            run=run, name=data["name"], value=data["value"], metadata=data.get("metadata") or {}
        )
        return {"id": str(metric.pk)}


class StepCallbackView(RunCallbackView):
    serializer_class = StepReportSerializer

    @extend_schema(request=StepReportSerializer, responses={201: dict})
    def post(self, request, run_id):
        return super().post(request, run_id)

    def record(self, run, data) -> dict:
        position = RunStep.objects.filter(run=run).count()
        step = RunStep.objects.create(
            run=run,
            name=data["name"],
            status=data["status"],
            position=position,
            payload=data.get("payload"),
            result=data.get("result"),
            error=data.get("error", ""),
            started_at=data.get("startedAt"),
            completed_at=data.get("completedAt"),
            duration_ms=data.get("durationMs"),
        )
        return {"id": str(step.pk)}
