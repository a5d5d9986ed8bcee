"""/api/orchestration/route, health, scaling/evaluate and metrics (the original's routes).

Field names are the original's camelCase (API.md). Reads -- and POST route, which only
computes an answer -- are open to any authenticated caller; POST scaling/evaluate
records a decision, so it is for nodes and operators only.
"""

from __future__ import annotations

import logging

from django.db import DatabaseError
from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from config.exceptions import ApiError
from config.serializers import StrictTypesMixin
from orchestration.api.fleet_auth import FleetViewMixin
from orchestration.services.fleet_metrics import fleet_metrics
from orchestration.services.health import (
    DOWN,
    UNHEALTHY,
    check_database,
    health_report,
)
from orchestration.services.routing import (
    PRIORITY_NAMES,
    InvalidPriority,
    RouteDecision,
    priority_class,
    route_select,
)
from orchestration.services.scaling import (
    ACTION_DOWN,
    ACTION_MAINTAIN,
    ACTION_UP,
    InvalidScalingInput,
    scaling_evaluate,
)

logger = logging.getLogger(__name__)


def _now_iso() -> str:
    return timezone.now().isoformat()


class FleetReadPermission(BasePermission):
    """Any authenticated caller: a node, an operator or an organization's API key."""

    def has_permission(self, request, view) -> bool:
        return request.auth is not None


# --- POST route --------------------------------------------------------------------------


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "enum": list(PRIORITY_NAMES)},
            {"type": "integer", "minimum": 0, "maximum": 10},
        ],
        "description": 'low / normal / high, or 0..10 where 7 and above is "high".',
    }
)
class PriorityField(serializers.Field):
    """What the schema says and nothing else: a name as written, or a whole number 0..10.

    The service also reads names in any case, numeric strings and a blank as "normal"
    (priority_class); the API refuses them, as its schema does.
    """

    def to_internal_value(self, data):
        if isinstance(data, str) and data not in PRIORITY_NAMES:
            raise serializers.ValidationError(
                f"priority must be one of {', '.join(PRIORITY_NAMES)} or a whole number 0..10."
            )
        try:
            return priority_class(data)
        except InvalidPriority as exc:
            raise serializers.ValidationError(str(exc)) from exc

    def to_representation(self, value):
        return value


class RouteRequestSerializer(StrictTypesMixin, serializers.Serializer):
    requestId = serializers.CharField(required=False, allow_blank=True, max_length=255)
    sourceRegion = serializers.CharField(
        required=False, allow_blank=True, allow_null=True, max_length=64
    )
    priority = PriorityField(required=False, default="normal")
    payload = serializers.JSONField(required=False, allow_null=True)
    capability = serializers.CharField(
        required=False,
        allow_blank=True,
        allow_null=True,
        max_length=120,
        help_text="Only nodes that list this capability (a handler key) are considered.",
    )


class RouteNodeSerializer(serializers.Serializer):
    id = serializers.CharField()
    region = serializers.CharField()
    endpoint = serializers.CharField()
    status = serializers.CharField()
    capabilities = serializers.ListField(child=serializers.CharField())
    capacity = serializers.IntegerField()
    activeRuns = serializers.IntegerField()
    headroom = serializers.FloatField(help_text="Free slots for this request's priority.")
    cpuUtilization = serializers.FloatField()
    memoryUtilization = serializers.FloatField()
    lastHeartbeatAt = serializers.DateTimeField()


class RouteSerializer(serializers.Serializer):
    queue = serializers.CharField(help_text="The Celery queue the work goes to.")
    strategy = serializers.CharField()
    reason = serializers.CharField()
    region = serializers.CharField(allow_null=True)
    priority = serializers.ChoiceField(choices=list(PRIORITY_NAMES))
    fallback = serializers.BooleanField(help_text="The node is outside sourceRegion.")


class RoutingSerializer(serializers.Serializer):
    targetNode = RouteNodeSerializer(allow_null=True)
    route = RouteSerializer()
    latency = serializers.FloatField(help_text="Estimated duration in ms.")
    latencySamples = serializers.IntegerField(
        help_text="Recent runs behind the estimate (0: the default estimate)."
    )


class RouteResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    requestId = serializers.CharField(allow_null=True)
    routing = RoutingSerializer()
    timestamp = serializers.DateTimeField()


def route_wire(decision: RouteDecision) -> dict:
    node = decision.target_node
    target = None
    if node is not None:
        target = {
            "id": node.node_id,
            "region": node.region,
            "endpoint": node.endpoint,
            "status": node.status,
            "capabilities": node.capabilities,
            "capacity": node.capacity,
            "activeRuns": node.active_runs,
            "headroom": decision.headroom,
            "cpuUtilization": node.cpu_utilization,
            "memoryUtilization": node.memory_utilization,
            "lastHeartbeatAt": node.last_heartbeat_at.isoformat(),
        }
    return {
        "targetNode": target,
        "route": {
            "queue": decision.queue,
            "strategy": decision.strategy,
            "reason": decision.reason,
            "region": decision.region,
            "priority": decision.priority,
            "fallback": decision.fallback,
        },
        "latency": round(decision.latency_ms, 1),
        "latencySamples": decision.latency_samples,
    }


class RouteView(FleetViewMixin, APIView):
    permission_classes = [FleetReadPermission]

    @extend_schema(
        operation_id="orchestration_route",
        summary="Choose a node and queue for a request",
        request=RouteRequestSerializer,
        responses={200: RouteResponseSerializer},
        examples=[
            OpenApiExample(
                "High priority from eu-west",
                value={"requestId": "r-1", "sourceRegion": "eu-west", "priority": "high"},
                request_only=True,
            )
        ],
    )
    def post(self, request):
        serializer = RouteRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        decision = route_select(
            source_region=data.get("sourceRegion") or None,
            priority=data["priority"],
            capability=data.get("capability") or None,
        )
        return Response(
            {
                "success": True,
                "requestId": data.get("requestId") or None,
                "routing": route_wire(decision),
                "timestamp": _now_iso(),
            }
        )


# --- POST scaling/evaluate ---------------------------------------------------------------


def _utilization_field():
    return serializers.FloatField(
        required=False,
        allow_null=True,
        min_value=0,
        max_value=100,
        help_text="A fraction 0..1; values above 1 (up to 100) are read as percent.",
    )


class ScalingEvaluateRequestSerializer(StrictTypesMixin, serializers.Serializer):
    cpuUtilization = _utilization_field()
    memoryUtilization = _utilization_field()
    requestRate = serializers.FloatField(
        required=False,
        allow_null=True,
        min_value=0,
        help_text="Requests per second over the whole fleet.",
    )


class ScalingDecisionSerializer(serializers.Serializer):
    action = serializers.ChoiceField(choices=[ACTION_UP, ACTION_DOWN, ACTION_MAINTAIN])
    currentReplicas = serializers.IntegerField()
    targetReplicas = serializers.IntegerField()
    reason = serializers.CharField()
    recommendedReplicas = serializers.IntegerField(
        help_text="The formula's answer before stabilisation and min/max."
    )
    stabilized = serializers.BooleanField()
    clamped = serializers.BooleanField()
    cpuUtilization = serializers.FloatField(allow_null=True)
    memoryUtilization = serializers.FloatField(allow_null=True)
    requestRate = serializers.FloatField(allow_null=True)
    requestRateUnit = serializers.CharField()
    pendingBacklog = serializers.IntegerField()
    p95DurationMs = serializers.FloatField(allow_null=True)
    ratios = serializers.DictField(child=serializers.FloatField())
    sources = serializers.DictField(child=serializers.CharField())
    targets = serializers.DictField(child=serializers.FloatField())
    evaluatedAt = serializers.DateTimeField()


class ScalingEvaluateResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    decision = ScalingDecisionSerializer()
    timestamp = serializers.DateTimeField()


class ScalingEvaluateView(FleetViewMixin, APIView):
    @extend_schema(
        operation_id="orchestration_scaling_evaluate",
        summary="Evaluate the fleet size (HPA formula) and record the decision",
        request=ScalingEvaluateRequestSerializer,
        responses={200: ScalingEvaluateResponseSerializer},
    )
    def post(self, request):
        serializer = ScalingEvaluateRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            decision = scaling_evaluate(
                cpu=data.get("cpuUtilization"),
                memory=data.get("memoryUtilization"),
                request_rate=data.get("requestRate"),
                actor=request.auth.key,
            )
        except InvalidScalingInput as exc:
            raise ApiError(
                "INVALID_REQUEST",
                "The request is invalid; see details.",
                details={exc.field: [exc.message]},
            ) from exc
        return Response({"success": True, "decision": decision, "timestamp": _now_iso()})


# --- GET health --------------------------------------------------------------------------


class HealthCheckSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["up", "down", "degraded", "embedded", "skipped"])
    detail = serializers.CharField()
    latencyMs = serializers.FloatField()


class HealthChecksSerializer(serializers.Serializer):
    database = HealthCheckSerializer()
    redis = HealthCheckSerializer()
    broker = HealthCheckSerializer()
    policyStore = HealthCheckSerializer(required=False)
    nodes = HealthCheckSerializer(required=False)
    runs = HealthCheckSerializer(required=False)
    circuits = HealthCheckSerializer(required=False)


class HealthNodeSerializer(serializers.Serializer):
    id = serializers.CharField()
    region = serializers.CharField()
    status = serializers.CharField()
    fresh = serializers.BooleanField()
    heartbeatAgeS = serializers.FloatField()
    activeRuns = serializers.IntegerField()
    capacity = serializers.IntegerField()
    cpuUtilization = serializers.FloatField()
    memoryUtilization = serializers.FloatField()


class HealthMetricsSerializer(serializers.Serializer):
    freshNodes = serializers.IntegerField(allow_null=True)
    staleNodes = serializers.IntegerField(allow_null=True)
    runningRuns = serializers.IntegerField(allow_null=True)
    pendingRuns = serializers.IntegerField(allow_null=True)
    stuckRuns = serializers.IntegerField(allow_null=True)
    openCircuits = serializers.IntegerField(allow_null=True)
    checksMs = serializers.FloatField()


class HealthSerializer(serializers.Serializer):
    overall = serializers.ChoiceField(choices=["healthy", "degraded", "unhealthy"])
    nodes = HealthNodeSerializer(many=True)
    metrics = HealthMetricsSerializer()
    checks = HealthChecksSerializer()
    checkedAt = serializers.DateTimeField()


class HealthResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    health = HealthSerializer()
    timestamp = serializers.DateTimeField()


class HealthView(FleetViewMixin, APIView):
    @extend_schema(
        operation_id="orchestration_health",
        summary="Run the health checks",
        description="HTTP 200 when healthy or degraded, 503 (same body) when unhealthy.",
        responses={200: HealthResponseSerializer, 503: HealthResponseSerializer},
    )
    def get(self, request):
        report = health_report()
        status = 503 if report["overall"] == UNHEALTHY else 200
        return Response({"success": True, "health": report, "timestamp": _now_iso()}, status=status)

    def handle_exception(self, exc):
        # Authenticating an API key or a session reads the database; when that is what is
        # down the answer is still a health report (redacted: the caller is unverified).
        if isinstance(exc, DatabaseError):
            logger.warning("health: database error before the checks ran: %s", exc)
            database = check_database()
            if database["status"] == DOWN:
                database["detail"] = "database unreachable"
            report = {
                "overall": UNHEALTHY,
                "nodes": [],
                "metrics": {"checksMs": database["latencyMs"]},
                "checks": {"database": database},
                "checkedAt": _now_iso(),
            }
            return Response(
                {"success": True, "health": report, "timestamp": _now_iso()}, status=503
            )
        return super().handle_exception(exc)


# --- GET metrics -------------------------------------------------------------------------


class MetricsAgentSerializer(serializers.Serializer):
    agent = serializers.CharField()
    agentId = serializers.UUIDField()
    organization = serializers.CharField()
    runs = serializers.IntegerField()
    successRate = serializers.FloatField(
        allow_null=True, help_text="SUCCESS / (SUCCESS + FAILED); null before any finished."
    )
    p50DurationMs = serializers.FloatField(allow_null=True)
    p95DurationMs = serializers.FloatField(allow_null=True)


class MetricsSerializer(serializers.Serializer):
    totalNodes = serializers.IntegerField(help_text="Registered nodes that are not OFFLINE.")
    healthyNodes = serializers.IntegerField(help_text="ACTIVE nodes with a fresh heartbeat.")
    activeRequests = serializers.IntegerField(help_text="RUNNING runs.")
    pendingBacklog = serializers.IntegerField(help_text="PENDING runs.")
    totalRequestsHandled = serializers.IntegerField(help_text="Runs created in the last 24 h.")
    averageLatency = serializers.FloatField(
        allow_null=True, help_text="Mean duration (ms) of runs created in the last hour."
    )
    requestsLastHour = serializers.IntegerField()
    agents = MetricsAgentSerializer(many=True)
    scope = serializers.ChoiceField(choices=["fleet", "organization"])
    windows = serializers.DictField(child=serializers.IntegerField())


class MetricsResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    metrics = MetricsSerializer()
    timestamp = serializers.DateTimeField()


class MetricsView(FleetViewMixin, APIView):
    @extend_schema(
        operation_id="orchestration_metrics",
        summary="Fleet and run metrics",
        description=(
            "Run figures cover the caller's organization for an API key, the whole fleet"
            " for a node or an operator."
        ),
        responses={200: MetricsResponseSerializer},
    )
    def get(self, request):
        # A FleetPrincipal (node, staff) has no organization: it sees the fleet.
        organization = getattr(request.auth, "organization", None)
        metrics = fleet_metrics(organization=organization)
        return Response({"success": True, "metrics": metrics, "timestamp": _now_iso()})
