"""The event bus: every event is a durable orchestrator_events row, then a live broadcast.

Publishing never fails the caller: an event that cannot be written is logged and
counted, because losing an event must not lose the run that caused it.

Live delivery happens once the row is committed: a Redis PUBLISH on EVENTS_CHANNEL when
REDIS_URL is set (every process's streams hear it), otherwise -- the embedded default,
one process -- a call of the in-process listeners (local_listen()).

This module is imported by the services, so it imports none of them. What runs agents
on behalf of the bus (broadcast, send) lives in orchestration.bus.delivery, the streams
in orchestration.bus.stream and retention in orchestration.bus.retention; docs/EVENTS.md
lists every event type.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

from django.conf import settings
from django.db import DatabaseError, transaction

from orchestration.choices import EventType
from orchestration.models import OrchestratorEvent

logger = logging.getLogger(__name__)

_redis = None
_redis_lock = threading.Lock()
publish_failures = 0

# Embedded mode's live subscribers: called with the wire form of each committed event.
_local_listeners: list[Callable[[dict], None]] = []
_local_lock = threading.Lock()


def _redis_client():
    global _redis
    if not settings.REDIS_URL:
        return None
    if _redis is None:
        with _redis_lock:
            if _redis is None:
                import redis

                _redis = redis.Redis.from_url(
                    settings.REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5
                )
    return _redis


def event_wire(event: OrchestratorEvent) -> dict:
    return {
        "id": event.pk,
        "type": event.type,
        "organization": str(event.organization_id) if event.organization_id else None,
        "agent": str(event.agent_id) if event.agent_id else None,
        "run": str(event.run_id) if event.run_id else None,
        "node": event.node_id or None,
        "payload": event.payload,
        "createdAt": event.created_at.isoformat(),
    }


def local_listen(callback: Callable[[dict], None]) -> None:
    """Hear every event committed in this process (embedded mode only: no REDIS_URL)."""
    with _local_lock:
        _local_listeners.append(callback)


def local_unlisten(callback: Callable[[dict], None]) -> None:
    with _local_lock:
        if callback in _local_listeners:
            _local_listeners.remove(callback)


def _broadcast(event: OrchestratorEvent) -> None:
    wire = event_wire(event)
    client = _redis_client()
    if client is None:
        with _local_lock:
            listeners = list(_local_listeners)
        for listener in listeners:
            try:
                listener(wire)
            except Exception:  # a broken subscriber must not break the publisher
                logger.exception("event %s: local listener failed", event.pk)
        return
    try:
        client.publish(settings.EVENTS_CHANNEL, json.dumps(wire, default=str))
    except Exception as exc:  # the row is the source of truth; live delivery is best effort
        logger.warning("event %s not broadcast: %s", event.pk, exc)


def publish(
    type: str,
    payload: dict | None = None,
    *,
    organization=None,
    agent=None,
    run=None,
    node: str = "",
) -> OrchestratorEvent | None:
    global publish_failures
    if type not in EventType.values:
        raise ValueError(f"unknown event type {type!r}")
    try:
        with transaction.atomic():
            event = OrchestratorEvent.objects.create(
                type=type,
                payload=payload or {},
                organization=organization,
                agent=agent,
                run=run,
                node_id=node,
            )
    except DatabaseError as exc:
        publish_failures += 1
        logger.error("event %s not recorded: %s", type, exc)
        return None
    transaction.on_commit(lambda: _broadcast(event))
    return event


# --- agents on the bus ------------------------------------------------------------------


def _agent_announcement(agent, node: str) -> dict:
    return {
        "agent": agent.name,
        "slug": agent.slug,
        "handler": agent.handler or None,
        "status": agent.status,
        "capabilities": sorted(agent.capabilities.values_list("name", flat=True)),
        "node": node,
    }


def register_agent(agent, *, node: str = "") -> OrchestratorEvent | None:
    """Announce that ``node`` (this process by default) serves the agent: agent.registered."""
    node = node or settings.ORCHESTRATOR_NODE_ID
    return publish(
        EventType.AGENT_REGISTERED,
        _agent_announcement(agent, node),
        organization=agent.organization,
        agent=agent,
        node=node,
    )


def unregister_agent(agent, *, node: str = "", reason: str = "") -> OrchestratorEvent | None:
    """Announce that ``node`` no longer serves the agent (shutdown): agent.unregistered."""
    node = node or settings.ORCHESTRATOR_NODE_ID
    return publish(
        EventType.AGENT_UNREGISTERED,
        {**_agent_announcement(agent, node), "reason": reason},
        organization=agent.organization,
        agent=agent,
        node=node,
    )
