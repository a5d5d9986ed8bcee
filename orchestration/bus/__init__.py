"""The event bus: every event is a durable orchestrator_events row, then a live broadcast.

Publishing never fails the caller: an event that cannot be written is logged and
counted, because losing an event must not lose the run that caused it.
"""

from __future__ import annotations

import json
import logging
import threading

from django.conf import settings
from django.db import DatabaseError, transaction

from orchestration.choices import EventType
from orchestration.models import OrchestratorEvent

logger = logging.getLogger(__name__)

CHANNEL = "acp:events"

_redis = None
_redis_lock = threading.Lock()
publish_failures = 0


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


def _broadcast(event: OrchestratorEvent) -> None:
    client = _redis_client()
    if client is None:
        return
    try:
        client.publish(CHANNEL, json.dumps(event_wire(event), default=str))
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
