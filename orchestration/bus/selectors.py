"""Reading the event log: who sees which events, "after N" pages, and live filtering.

One EventScope decides visibility for the list endpoint, the stream's database
catch-up and the stream's live messages alike, so the three can never disagree.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from django.db import connection
from django.db.models import Q, QuerySet

from orchestration.bus import event_wire
from orchestration.models import OrchestratorEvent

MAX_PAGE = 1000

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class EventScope:
    """The events one caller may see, narrowed by the caller's filters.

    organization_id None means every organization (nodes and staff); include_fleet adds
    the events of no organization (nodes, scaling, configuration) for operators.
    """

    organization_id: str | None
    include_fleet: bool = False
    type: str | None = None
    agent_ids: frozenset[str] | None = None  # None: any agent

    def queryset(self) -> QuerySet:
        events = OrchestratorEvent.objects.all()
        if self.organization_id is not None:
            visible = Q(organization_id=self.organization_id)
            if self.include_fleet:
                visible |= Q(organization__isnull=True)
            events = events.filter(visible)
        if self.type:
            events = events.filter(type=self.type)
        if self.agent_ids is not None:
            events = events.filter(agent_id__in=self.agent_ids)
        return events

    def matches(self, wire: dict) -> bool:
        """The same decision as queryset(), for an event that arrives live."""
        if self.organization_id is not None:
            organization = wire.get("organization")
            if organization != self.organization_id and not (
                self.include_fleet and organization is None
            ):
                return False
        if self.type and wire.get("type") != self.type:
            return False
        return not (self.agent_ids is not None and wire.get("agent") not in self.agent_ids)


def events_after(*, scope: EventScope, after: int, limit: int) -> list[OrchestratorEvent]:
    """Visible events with id > after, oldest first (served by event_org_id_idx/type_id_idx)."""
    limit = max(1, min(int(limit), MAX_PAGE))
    return list(scope.queryset().filter(id__gt=after).order_by("id")[:limit])


def events_latest_id() -> int:
    """The newest id in the log: where a stream without a cursor starts."""
    newest = OrchestratorEvent.objects.order_by("-id").values_list("id", flat=True).first()
    return newest or 0


def events_wire_after(*, scope: EventScope, after: int, limit: int) -> list[dict]:
    return [event_wire(event) for event in events_after(scope=scope, after=after, limit=limit)]


def release_connection() -> None:
    """Close this thread's database connection (streams: see connection_released)."""
    # Inside a transaction (a test's, say) the connection is not ours to close.
    if not connection.in_atomic_block:
        connection.close()


def connection_released(function: Callable[P, R]) -> Callable[P, R]:
    """The function, closing its thread's database connection when it returns.

    For the streams, whose reads run in a thread of the ASGI server that belongs to a
    request lasting hours: a stream waiting for its next event must hold no connection.
    """

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        finally:
            release_connection()

    return wrapper
