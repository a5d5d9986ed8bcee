"""Node routes under /api/orchestration/ (API.md): no trailing slash, as the original had."""

from __future__ import annotations

from django.urls import path

from orchestration.api.nodes import (
    FailoverView,
    NodeDetailView,
    NodeDrainView,
    NodeHeartbeatView,
    NodeListView,
    NodeRegisterView,
)

urlpatterns = [
    path("nodes", NodeListView.as_view(), name="nodes"),
    # Before nodes/<id>: "register" is a command, not a node id.
    path("nodes/register", NodeRegisterView.as_view(), name="node-register"),
    path("nodes/<str:node_id>/heartbeat", NodeHeartbeatView.as_view(), name="node-heartbeat"),
    path("nodes/<str:node_id>/drain", NodeDrainView.as_view(), name="node-drain"),
    path("nodes/<str:node_id>", NodeDetailView.as_view(), name="node-detail"),
    path("failover/<str:node_id>", FailoverView.as_view(), name="failover"),
]
