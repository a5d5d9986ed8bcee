"""The node lifecycle: register, heartbeat, drain, unregister.

Status machine (docs/FLEET.md): a node registers ACTIVE; an operator may set it
DRAINING (it takes no new work); the expiry sweep (services/reaper.py) makes a silent
node UNHEALTHY and then FAILED, and fails it over; a heartbeat brings an UNHEALTHY node
back; a graceful exit leaves it OFFLINE. Every transition is a conditional UPDATE whose
WHERE names the status it leaves, and every transition publishes an event.

Heartbeats are the hot path (every node, every few seconds): one UPDATE of the node
row and one UPDATE of its runs' leases, never a read-modify-write.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection, models
from django.utils import timezone

from orchestration import bus
from orchestration.choices import EventType, NodeStatus
from orchestration.models import OrchestratorNode
from orchestration.services.config import config_current
from runs.choices import RunStatus
from runs.models import AgentRun

# Where node_drain records the operator's intent, so a drained node that goes quiet
# and comes back returns to DRAINING rather than to ACTIVE.
DRAIN_MARKER = "drainRequestedAt"

# Nodes that heartbeat without changing status.
LIVE_NODE_STATES = (NodeStatus.ACTIVE, NodeStatus.DRAINING)
# Nodes an operator may drain.
DRAINABLE_NODE_STATES = (NodeStatus.ACTIVE, NodeStatus.UNHEALTHY)


class NodeNotFound(LookupError):
    pass


class NodeStateConflict(Exception):
    """The node's status does not allow the requested change (e.g. draining a FAILED node)."""

    def __init__(self, node_id: str, status: str, action: str) -> None:
        super().__init__(f"node {node_id} is {status}: it cannot be {action}")
        self.node_id = node_id
        self.status = status


def node_status_event(node_id: str, previous: str, status: str, reason: str, **extra) -> None:
    bus.publish(
        EventType.NODE_STATUS_CHANGED,
        {"node": node_id, "from": previous, "to": status, "reason": reason, **extra},
        node=node_id,
    )


def node_register(
    *,
    node_id: str,
    region: str,
    endpoint: str = "",
    capabilities: Iterable[str] = (),
    capacity: int = 1,
    metadata: dict | None = None,
    version: str = "",
    now: datetime | None = None,
) -> OrchestratorNode:
    """Upsert the node by its id and make it ACTIVE: a (re)started node starts afresh.

    Re-registering replaces what the node says about itself (metadata included, so an
    earlier drain is forgotten: a restarted process is a new node under an old name).
    """
    now = now or timezone.now()
    # update_or_create locks the row (or retries a racing insert on the unique node_id),
    # so two registrations of one id -- a restart racing its predecessor's shutdown --
    # apply one after the other instead of interleaving their fields.
    node, created = OrchestratorNode.objects.update_or_create(
        node_id=node_id,
        defaults={
            "region": region,
            "endpoint": endpoint,
            "capabilities": sorted({str(c) for c in capabilities}),
            "capacity": max(0, int(capacity)),
            "metadata": dict(metadata or {}),
            "version": version,
            "status": NodeStatus.ACTIVE,
            "active_runs": 0,
            "last_heartbeat_at": now,
            "registered_at": now,
        },
    )
    bus.publish(
        EventType.NODE_REGISTERED,
        {
            "node": node_id,
            "region": region,
            "endpoint": endpoint,
            "capacity": node.capacity,
            "capabilities": node.capabilities,
            "version": version,
            "created": created,
        },
        node=node_id,
    )
    return node


@dataclass(frozen=True)
class HeartbeatResult:
    node_id: str
    # ACTIVE or DRAINING after the heartbeat: the node takes (or finishes) work normally.
    live: bool
    # UNHEALTHY -> ACTIVE (or DRAINING) by this heartbeat.
    revived: bool
    # Known when the node was revived or is not live (FAILED / OFFLINE: it must register
    # again to take work); None on the common path, which reads nothing.
    status: str | None
    leases_extended: int


def node_heartbeat(
    *,
    node_id: str,
    active_runs: int | None = None,
    capacity: int | None = None,
    cpu_utilization: float | None = None,
    memory_utilization: float | None = None,
    held_runs: Iterable | None = None,
    now: datetime | None = None,
) -> HeartbeatResult:
    """Record a heartbeat: one UPDATE of the node row plus one UPDATE of its leases.

    The lease of every RUNNING run the node holds is pushed to now + lease_s whatever the
    node's status: a lease says "this process is alive and still working on the run".
    held_runs, when the node knows them (a Celery worker: the runs its pool is executing),
    narrows that to those runs: a run whose pool process died, or that a previous process
    under the same node id left behind, is not being worked on, so its lease runs out and
    the reaper takes it back.
    Raises NodeNotFound for a node that never registered.
    """
    now = now or timezone.now()
    fields: dict = {"last_heartbeat_at": now, "updated_at": now}
    if active_runs is not None:
        fields["active_runs"] = max(0, int(active_runs))
    if capacity is not None:
        fields["capacity"] = max(0, int(capacity))
    if cpu_utilization is not None:
        fields["cpu_utilization"] = float(cpu_utilization)
    if memory_utilization is not None:
        fields["memory_utilization"] = float(memory_utilization)

    nodes = OrchestratorNode.objects.filter(node_id=node_id)
    revived = False
    status: str | None = None
    live = nodes.filter(status__in=LIVE_NODE_STATES).update(**fields) == 1
    if not live:
        # Conditional on UNHEALTHY: the sweep may be turning it FAILED at this very moment,
        # and a FAILED node (its runs already moved) must register again, not slip back.
        revived = (
            nodes.filter(status=NodeStatus.UNHEALTHY).update(
                status=models.Case(
                    models.When(
                        metadata__has_key=DRAIN_MARKER, then=models.Value(NodeStatus.DRAINING)
                    ),
                    default=models.Value(NodeStatus.ACTIVE),
                ),
                **fields,
            )
            == 1
        )
        if revived:
            live = True
            status = nodes.values_list("status", flat=True).first()
            node_status_event(node_id, NodeStatus.UNHEALTHY, status, "heartbeat resumed")
        elif nodes.update(**fields) == 1:
            # FAILED or OFFLINE: record that it is alive, leave the status to a registration.
            status = nodes.values_list("status", flat=True).first()
        else:
            raise NodeNotFound(node_id)

    lease_s = float(config_current()["nodes"]["lease_s"])
    held = AgentRun.objects.filter(node_id=node_id, status=RunStatus.RUNNING)
    if held_runs is not None:
        held_ids = list(held_runs)
        held = held.filter(pk__in=held_ids) if held_ids else None
    leases = 0
    if held is not None:
        leases = held.update(lease_expires_at=now + timedelta(seconds=lease_s))
    return HeartbeatResult(
        node_id=node_id, live=live, revived=revived, status=status, leases_extended=leases
    )


def node_drain(*, node_id: str, now: datetime | None = None) -> OrchestratorNode:
    """ACTIVE / UNHEALTHY -> DRAINING: routing stops sending it work; running work finishes.

    Draining a DRAINING node changes nothing; an OFFLINE or FAILED node cannot be drained.
    """
    now = now or timezone.now()
    node = OrchestratorNode.objects.filter(node_id=node_id).first()
    if node is None:
        raise NodeNotFound(node_id)
    if node.status == NodeStatus.DRAINING:
        return node
    if node.status not in DRAINABLE_NODE_STATES:
        raise NodeStateConflict(node_id, node.status, "drained")
    metadata = {**(node.metadata or {}), DRAIN_MARKER: now.isoformat()}
    # Conditional on the status read above: a heartbeat reviving it or the sweep failing
    # it in between wins, and the operator sees the conflict instead of a silent overwrite.
    changed = OrchestratorNode.objects.filter(pk=node.pk, status=node.status).update(
        status=NodeStatus.DRAINING, metadata=metadata, updated_at=now
    )
    if not changed:
        node.refresh_from_db()
        if node.status == NodeStatus.DRAINING:
            return node
        raise NodeStateConflict(node_id, node.status, "drained")
    node_status_event(node_id, node.status, NodeStatus.DRAINING, "drain requested")
    node.status, node.metadata, node.updated_at = NodeStatus.DRAINING, metadata, now
    return node


def node_unregister(
    *, node_id: str, reason: str = "unregistered", now: datetime | None = None
) -> OrchestratorNode:
    """Any status -> OFFLINE (a graceful exit, or an operator removing the node).

    Runs it still holds keep their leases only while it keeps heartbeating; once it is
    really gone the reaper re-queues them when the leases run out.
    """
    now = now or timezone.now()
    node = OrchestratorNode.objects.filter(node_id=node_id).first()
    if node is None:
        raise NodeNotFound(node_id)
    if node.status == NodeStatus.OFFLINE:
        return node
    changed = (
        OrchestratorNode.objects.filter(pk=node.pk)
        .exclude(status=NodeStatus.OFFLINE)
        .update(status=NodeStatus.OFFLINE, active_runs=0, updated_at=now)
    )
    previous = node.status
    node.refresh_from_db()
    if changed:
        bus.publish(
            EventType.NODE_UNREGISTERED,
            {"node": node_id, "from": previous, "to": NodeStatus.OFFLINE, "reason": reason},
            node=node_id,
        )
    return node


def node_list(
    *, region: str | None = None, status: str | None = None, capability: str | None = None
) -> list[OrchestratorNode]:
    """Nodes for discovery: one query (the fleet is tens of rows, not millions)."""
    nodes = OrchestratorNode.objects.order_by("node_id")
    if region:
        nodes = nodes.filter(region=region)
    if status:
        nodes = nodes.filter(status=status)
    if capability and connection.features.supports_json_field_contains:
        return list(nodes.filter(capabilities__contains=[capability]))
    result = list(nodes)
    if capability:
        # SQLite (the embedded default) has no JSON containment: filter the few rows here.
        result = [n for n in result if capability in (n.capabilities or [])]
    return result


def node_get(*, node_id: str) -> OrchestratorNode:
    node = OrchestratorNode.objects.filter(node_id=node_id).first()
    if node is None:
        raise NodeNotFound(node_id)
    return node
