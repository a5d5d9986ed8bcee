"""GET /api/orchestration/circuits and the operators' force command."""

from __future__ import annotations

from datetime import UTC, datetime

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.api.base import scope_to_organization
from agents.choices import Scope
from agents.models import Agent
from config.exceptions import ApiError
from config.serializers import StrictTypesMixin
from orchestration.policies import PolicyStoreUnavailable, policy_store
from orchestration.services.circuits import AgentCircuit, circuit_force, circuit_list


def _epoch_iso(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, tz=UTC).isoformat().replace("+00:00", "Z")


def circuit_wire(item: AgentCircuit) -> dict:
    s = item.snapshot
    return {
        "agent": item.agent.name,
        "agentId": str(item.agent.pk),
        "slug": item.agent.slug,
        "state": s.state,
        "consecutiveFailures": s.consecutive_failures,
        "windowCalls": s.window_calls,
        "windowFailures": s.window_failures,
        "openedAt": _epoch_iso(s.opened_at),
        "nextProbeAt": _epoch_iso(s.next_probe_at),
        "probesInFlight": s.probes_in_flight,
        "waitInOpenS": item.wait_in_open_s,
    }


class CircuitSerializer(serializers.Serializer):
    agent = serializers.CharField()
    agentId = serializers.UUIDField()
    slug = serializers.CharField()
    state = serializers.CharField()
    consecutiveFailures = serializers.IntegerField()
    windowCalls = serializers.IntegerField()
    windowFailures = serializers.IntegerField()
    openedAt = serializers.DateTimeField(allow_null=True)
    nextProbeAt = serializers.DateTimeField(allow_null=True)
    probesInFlight = serializers.IntegerField()
    waitInOpenS = serializers.FloatField()


class CircuitListSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    circuits = CircuitSerializer(many=True)
    count = serializers.IntegerField()
    store = serializers.CharField()
    timestamp = serializers.DateTimeField()


class CircuitForceSerializer(StrictTypesMixin, serializers.Serializer):
    state = serializers.ChoiceField(
        choices=["OPEN", "CLOSED"], allow_null=True, help_text="null releases the override."
    )


class CircuitListView(APIView):
    read_scope = Scope.AGENTS_READ

    @extend_schema(operation_id="orchestration_circuits", responses={200: CircuitListSerializer})
    def get(self, request):
        agents = scope_to_organization(
            Agent.objects.prefetch_related("config_entries"), request.auth
        )
        circuits = [circuit_wire(item) for item in circuit_list(agents=agents.order_by("name"))]
        return Response(
            {
                "success": True,
                "circuits": circuits,
                "count": len(circuits),
                "store": policy_store().backend,
                "timestamp": timezone.now().isoformat(),
            }
        )


class CircuitForceView(APIView):
    read_scope = Scope.AGENTS_WRITE
    write_scope = Scope.AGENTS_WRITE

    @extend_schema(
        operation_id="orchestration_circuit_force",
        request=CircuitForceSerializer,
        responses={200: CircuitSerializer},
    )
    def post(self, request, agent: str):
        serializer = CircuitForceSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        agents = scope_to_organization(Agent.objects.all(), request.auth)
        found = agents.filter(slug=agent).first() or agents.filter(name=agent).first()
        if found is None:
            raise ApiError("NOT_FOUND", "Not found.", http_status=404)
        actor = request.auth.key
        try:
            circuit_force(agent=found, state=serializer.validated_data["state"], actor=actor)
        except PolicyStoreUnavailable as exc:
            raise ApiError(
                "SERVICE_UNAVAILABLE",
                f"The shared policy store is unreachable; the circuit was not changed ({exc}).",
                http_status=503,
                headers={"Retry-After": "5"},
            ) from exc
        item = circuit_list(agents=[found])[0]
        return Response(circuit_wire(item))
