"""The node endpoints of /api/orchestration/ (API.md): register, discover, heartbeat,
drain, unregister and fail over. camelCase on the wire, as the original clients send it.

Reads are open to any authenticated caller; writes to nodes (the node token) and staff
(FleetViewMixin), never to an organization's API key.
"""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from config.exceptions import ApiError
from config.serializers import SentLengthMixin, StrictTypesMixin
from orchestration.api.fleet_auth import FleetViewMixin
from orchestration.choices import NodeStatus
from orchestration.models import OrchestratorNode
from orchestration.services import nodes as node_services
from orchestration.services.reaper import node_failover

# Node ids name Celery queues (node.<id>) and appear in URLs: keep them to safe characters.
NODE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@:-]*$"


def node_wire(node: OrchestratorNode, *, now=None) -> dict:
    now = now or timezone.now()
    return {
        "id": node.node_id,
        "region": node.region,
        "endpoint": node.endpoint,
        "capabilities": node.capabilities,
        "metadata": node.metadata,
        "status": node.status,
        "capacity": node.capacity,
        "activeRuns": node.active_runs,
        "cpuUtilization": node.cpu_utilization,
        "memoryUtilization": node.memory_utilization,
        "version": node.version,
        "lastHeartbeatAt": node.last_heartbeat_at.isoformat(),
        "registeredAt": node.registered_at.isoformat(),
        "heartbeatAgeS": round(max(0.0, (now - node.last_heartbeat_at).total_seconds()), 3),
    }


def _node_or_404(node_id: str) -> OrchestratorNode:
    try:
        return node_services.node_get(node_id=node_id)
    except node_services.NodeNotFound:
        raise _not_found(node_id) from None


def _not_found(node_id: str) -> ApiError:
    return ApiError("NOT_FOUND", f"No node {node_id!r} is registered.", http_status=404)


# --- serializers ----------------------------------------------------------------------------


class NodeSerializer(serializers.Serializer):
    id = serializers.CharField()
    region = serializers.CharField()
    endpoint = serializers.CharField()
    capabilities = serializers.ListField(child=serializers.CharField())
    metadata = serializers.DictField()
    status = serializers.ChoiceField(choices=NodeStatus.choices)
    capacity = serializers.IntegerField()
    activeRuns = serializers.IntegerField()
    cpuUtilization = serializers.FloatField()
    memoryUtilization = serializers.FloatField()
    version = serializers.CharField()
    lastHeartbeatAt = serializers.DateTimeField()
    registeredAt = serializers.DateTimeField()
    heartbeatAgeS = serializers.FloatField()


class NodeResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    node = NodeSerializer()
    timestamp = serializers.DateTimeField()


class NodeListResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    nodes = NodeSerializer(many=True)
    count = serializers.IntegerField()
    timestamp = serializers.DateTimeField()


class HeartbeatResponseSerializer(NodeResponseSerializer):
    revived = serializers.BooleanField()
    leasesExtended = serializers.IntegerField()


class NodeRegisterSerializer(StrictTypesMixin, serializers.Serializer):
    id = serializers.RegexField(NODE_ID_PATTERN, max_length=200)
    region = serializers.RegexField(NODE_ID_PATTERN, max_length=64)
    endpoint = serializers.CharField(max_length=500, allow_blank=True)
    capabilities = serializers.ListField(
        child=serializers.CharField(max_length=120), max_length=500
    )
    metadata = serializers.DictField(required=False, default=dict)
    capacity = serializers.IntegerField(required=False, default=1, min_value=0, max_value=100_000)
    version = serializers.CharField(required=False, default="", allow_blank=True, max_length=64)


class NodeHeartbeatSerializer(StrictTypesMixin, serializers.Serializer):
    activeRuns = serializers.IntegerField(required=False, min_value=0, max_value=1_000_000)
    capacity = serializers.IntegerField(required=False, min_value=0, max_value=100_000)
    cpuUtilization = serializers.FloatField(required=False, min_value=0.0, max_value=1.0)
    memoryUtilization = serializers.FloatField(required=False, min_value=0.0, max_value=1.0)


class NodeListQuerySerializer(SentLengthMixin, serializers.Serializer):
    region = serializers.CharField(
        required=False, max_length=64, help_text="Only nodes of this region."
    )
    status = serializers.ChoiceField(
        required=False, choices=NodeStatus.choices, help_text="Only this status."
    )
    capability = serializers.CharField(
        required=False, max_length=120, help_text="Only nodes that can run this."
    )


class FailoverResultSerializer(serializers.Serializer):
    backupNode = serializers.CharField(allow_null=True)
    reassignedRuns = serializers.IntegerField()
    failedRuns = serializers.IntegerField()
    queue = serializers.CharField()
    message = serializers.CharField()


class FailoverResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    result = FailoverResultSerializer()
    timestamp = serializers.DateTimeField()


def _node_response(node: OrchestratorNode, **extra) -> Response:
    now = timezone.now()
    return Response(
        {"success": True, "node": node_wire(node, now=now), **extra, "timestamp": now.isoformat()}
    )


# --- views ---------------------------------------------------------------------------------


class NodeListView(FleetViewMixin, APIView):
    @extend_schema(
        operation_id="orchestration_nodes_list",
        summary="Discover nodes",
        parameters=[NodeListQuerySerializer],
        responses={200: NodeListResponseSerializer},
    )
    def get(self, request):
        # A plain dict: a QueryDict lets DRF skip blank values ("status=") instead of refusing.
        query = NodeListQuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        now = timezone.now()
        nodes = node_services.node_list(**query.validated_data)
        return Response(
            {
                "success": True,
                "nodes": [node_wire(node, now=now) for node in nodes],
                "count": len(nodes),
                "timestamp": now.isoformat(),
            }
        )


class NodeRegisterView(FleetViewMixin, APIView):
    @extend_schema(
        operation_id="orchestration_nodes_register",
        summary="Register a node (upsert by id; it becomes ACTIVE)",
        request=NodeRegisterSerializer,
        responses={200: NodeResponseSerializer},
    )
    def post(self, request):
        body = NodeRegisterSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        node = node_services.node_register(
            node_id=data["id"],
            region=data["region"],
            endpoint=data["endpoint"],
            capabilities=data["capabilities"],
            capacity=data["capacity"],
            metadata=data["metadata"],
            version=data["version"],
        )
        return _node_response(node)


class NodeHeartbeatView(FleetViewMixin, APIView):
    @extend_schema(
        operation_id="orchestration_nodes_heartbeat",
        summary="Heartbeat: load figures; extends the leases of the node's runs",
        request=NodeHeartbeatSerializer,
        responses={200: HeartbeatResponseSerializer},
    )
    def post(self, request, node_id: str):
        body = NodeHeartbeatSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        try:
            result = node_services.node_heartbeat(
                node_id=node_id,
                active_runs=data.get("activeRuns"),
                capacity=data.get("capacity"),
                cpu_utilization=data.get("cpuUtilization"),
                memory_utilization=data.get("memoryUtilization"),
            )
        except node_services.NodeNotFound:
            raise _not_found(node_id) from None
        # The node reads its status here: FAILED or OFFLINE means "register again".
        return _node_response(
            _node_or_404(node_id), revived=result.revived, leasesExtended=result.leases_extended
        )


class NodeDrainView(FleetViewMixin, APIView):
    @extend_schema(
        operation_id="orchestration_nodes_drain",
        summary="Drain a node: it takes no new work, running work finishes",
        request=None,
        responses={200: NodeResponseSerializer},
    )
    def post(self, request, node_id: str):
        try:
            node = node_services.node_drain(node_id=node_id)
        except node_services.NodeNotFound:
            raise _not_found(node_id) from None
        except node_services.NodeStateConflict as exc:
            raise ApiError(
                "INVALID_NODE_STATE", str(exc), http_status=409, details={"status": exc.status}
            ) from None
        return _node_response(node)


class NodeDetailView(FleetViewMixin, APIView):
    @extend_schema(
        operation_id="orchestration_nodes_retrieve",
        summary="One node",
        responses={200: NodeResponseSerializer},
    )
    def get(self, request, node_id: str):
        return _node_response(_node_or_404(node_id))

    @extend_schema(
        operation_id="orchestration_nodes_unregister",
        summary="Unregister a node (OFFLINE)",
        responses={200: NodeResponseSerializer},
    )
    def delete(self, request, node_id: str):
        try:
            node = node_services.node_unregister(
                node_id=node_id, reason=f"DELETE by {request.auth.key}"
            )
        except node_services.NodeNotFound:
            raise _not_found(node_id) from None
        return _node_response(node)


class FailoverView(FleetViewMixin, APIView):
    @extend_schema(
        operation_id="orchestration_failover",
        summary="Fail a node over: FAILED, its runs moved to a backup node",
        request=None,
        responses={200: FailoverResponseSerializer},
    )
    def post(self, request, node_id: str):
        try:
            result = node_failover(node_id=node_id, reason=f"requested by {request.auth.key}")
        except node_services.NodeNotFound:
            raise _not_found(node_id) from None
        return Response(
            {
                "success": True,
                "result": {
                    "backupNode": result.backup_node,
                    "reassignedRuns": result.reassigned_runs,
                    "failedRuns": result.failed_runs,
                    "queue": result.queue,
                    "message": result.message,
                },
                "timestamp": timezone.now().isoformat(),
            }
        )
