from __future__ import annotations

from django.db import models


class NodeStatus(models.TextChoices):
    ACTIVE = "ACTIVE", "Active"
    DRAINING = "DRAINING", "Draining"
    UNHEALTHY = "UNHEALTHY", "Unhealthy"
    OFFLINE = "OFFLINE", "Offline"
    FAILED = "FAILED", "Failed"


# Nodes that may be handed new work.
ROUTABLE_NODE_STATES = frozenset({NodeStatus.ACTIVE})


class EventType(models.TextChoices):
    """The closed list of events the bus carries (docs/OPERATIONS.md describes each)."""

    RUN_CREATED = "run.created", "Run created"
    RUN_STARTED = "run.started", "Run started"
    RUN_SUCCEEDED = "run.succeeded", "Run succeeded"
    RUN_FAILED = "run.failed", "Run failed"
    RUN_CANCELLED = "run.cancelled", "Run cancelled"
    RUN_REQUEUED = "run.requeued", "Run re-queued"
    RUN_STALE_COMPLETION = "run.stale_completion", "Stale completion discarded"
    RATE_LIMITED = "rate.limited", "Request rate limited"
    CIRCUIT_OPENED = "circuit.opened", "Circuit opened"
    CIRCUIT_HALF_OPEN = "circuit.half_open", "Circuit half-open"
    CIRCUIT_CLOSED = "circuit.closed", "Circuit closed"
    NODE_REGISTERED = "node.registered", "Node registered"
    NODE_STATUS_CHANGED = "node.status_changed", "Node status changed"
    NODE_FAILOVER = "node.failover", "Node failed over"
    NODE_UNREGISTERED = "node.unregistered", "Node unregistered"
    AGENT_REGISTERED = "agent.registered", "Agent registered"
    AGENT_UNREGISTERED = "agent.unregistered", "Agent unregistered"
    AGENT_MESSAGE = "agent.message", "Agent message"
    CONFIG_UPDATED = "config.updated", "Configuration updated"
    SCALING_EVALUATED = "scaling.evaluated", "Scaling evaluated"
