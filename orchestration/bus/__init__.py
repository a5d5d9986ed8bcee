"""The event bus: every event is a durable orchestrator_events row, then a live broadcast.

Publishing never fails the caller: an event that cannot be written is logged and
counted, because losing an event must not lose the run that caused it.

Live delivery happens once the row is committed: a Redis PUBLISH on EVENTS_CHANNEL when
REDIS_URL is set (every process's streams hear it), sent by a thread of the process so
the committing request does not wait for it (_Sender), otherwise -- the embedded default,
one process -- a call of the in-process listeners (local_listen()).

This module is imported by the services, so it imports none of them. What runs agents
on behalf of the bus (broadcast, send) lives in orchestration.bus.delivery, the streams
in orchestration.bus.stream and retention in orchestration.bus.retention; docs/EVENTS.md
lists every event type.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.db import DatabaseError, connections, router, transaction

from orchestration.choices import EventType
from orchestration.models import OrchestratorEvent
from runs import services as run_services
from runs.choices import RunMode, RunStatus
from runs.models import AgentRun
from runs.recorder import RunRecords, record_ctes, record_tools_repair, recording_flush
from runs.sql import prepared_cursor

logger = logging.getLogger(__name__)

_redis = None
_redis_lock = threading.Lock()
publish_failures = 0
# Committed events not broadcast live (the send queue full, or Redis refused the batch).
broadcast_dropped = 0

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


def _broadcast(
    event: OrchestratorEvent | dict, *, done: str | None = None, now: bool = False
) -> None:
    """Send a committed event live. ``done``: a terminal run event's completion signal (the
    run's row as JSON, read back by runs.services._run_from_signal). ``now``: sent by this
    thread before it returns rather than by the sender thread (a waiter is expected: an
    async run)."""
    wire = event if isinstance(event, dict) else event_wire(event)
    client = _redis_client()
    if client is None:
        with _local_lock:
            listeners = list(_local_listeners)
        for listener in listeners:
            try:
                listener(wire)
            except Exception:  # a broken subscriber must not break the publisher
                logger.exception("event %s: local listener failed", wire["id"])
        return
    _sender.submit((wire, done), now=now)


class _Sender:
    """Sends committed events to Redis from one thread per process.

    The process that committed an event does not wait for Redis: the event is queued and
    this thread sends it -- with every event queued meanwhile, in one pipeline, in commit
    order. Live delivery is best effort (the row is the source of truth), so a batch Redis
    refuses is logged and dropped, and the queue is bounded: while Redis is unreachable the
    newest events beyond MAX_QUEUED are dropped rather than kept in memory. flush() waits
    until what was queued has been sent (shutdown, tests); it runs at interpreter exit too.

    ``submit(now=True)`` (an async run's terminal event, whose caller may be waiting on its
    completion signal) sends from the submitting thread when nothing is queued or being
    sent -- the hand-over to the sender thread cost the waiter more than the round trip --
    and queues otherwise, so events still reach Redis in commit order. Once such a send
    failed (Redis down or hung: up to its socket timeout), the next INLINE_BACKOFF_S of them
    are queued, so an outage stalls the sender thread, not the run's own.
    """

    MAX_QUEUED = 10_000
    MAX_BATCH = 500
    INLINE_BACKOFF_S = 1.0

    def __init__(self) -> None:
        self._cond = threading.Condition()
        # (wire, completion signal or None), in commit order.
        self._queued: list[tuple[dict, str | None]] = []
        self._sending = False
        self._pid: int | None = None
        self._inline_after = 0.0
        self.dropped = 0

    def submit(self, item: tuple[dict, str | None], *, now: bool = False) -> None:
        with self._cond:
            if self._pid != os.getpid():
                # First use in this process (a forked worker child starts afresh).
                self._queued, self._sending, self._pid = [], False, os.getpid()
                threading.Thread(target=self._loop, name="event-sender", daemon=True).start()
            if len(self._queued) >= self.MAX_QUEUED:
                global broadcast_dropped
                broadcast_dropped += 1
                self.dropped += 1
                if self.dropped % 1000 == 1:
                    logger.warning("event %s not broadcast: the send queue is full", item[0]["id"])
                return
            inline = now and not self._queued and not self._sending
            if not inline or time.monotonic() < self._inline_after:
                self._queued.append(item)
                self._cond.notify_all()
                return
            self._sending = True
        try:
            if not _send([item]):
                self._inline_after = time.monotonic() + self.INLINE_BACKOFF_S
        finally:
            with self._cond:
                self._sending = False
                self._cond.notify_all()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued event has been sent (or dropped); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._pid != os.getpid():
                return True
            while self._queued or self._sending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _loop(self) -> None:
        while True:
            with self._cond:
                # Not while another thread sends (submit(now=True)): commit order holds.
                while not self._queued or self._sending:
                    self._cond.wait()
                batch = self._queued[: self.MAX_BATCH]
                del self._queued[: self.MAX_BATCH]
                self._sending = True
            try:
                _send(batch)
            finally:
                with self._cond:
                    self._sending = False
                    self._cond.notify_all()


def _send(batch: list[tuple[dict, str | None]]) -> bool:
    """One pipeline: every event's PUBLISH, and a terminal run event's completion signal.
    False when Redis refused it (the batch is dropped, counted)."""
    client = _redis_client()
    try:
        pipe = client.pipeline(transaction=False)
        for wire, done in batch:
            if wire["type"] in TERMINAL_RUN_EVENTS:
                # The run's completion signal (run_wait), in the same round trip: the run's
                # row, or its status alone (the waiter then reads the row).
                key = run_services.run_done_key(wire["run"])
                pipe.rpush(key, done or wire["payload"].get("status") or "")
                pipe.expire(key, run_services.RUN_DONE_TTL_S)
            pipe.publish(settings.EVENTS_CHANNEL, json.dumps(wire, default=str))
        pipe.execute()
    except Exception as exc:  # the row is the source of truth; live delivery is best effort
        global broadcast_dropped
        broadcast_dropped += len(batch)
        logger.warning(
            "%d event(s) not broadcast (first %s): %s", len(batch), batch[0][0]["id"], exc
        )
        return False
    return True


_sender = _Sender()
atexit.register(_sender.flush, 2.0)


def broadcast_flush(timeout: float = 5.0) -> bool:
    """Wait until this process's committed events have been sent to Redis (shutdown)."""
    return _sender.flush(timeout)


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


# --- a run's terminal event, written with its outcome -------------------------------------

TERMINAL_RUN_EVENTS = {
    EventType.RUN_SUCCEEDED: RunStatus.SUCCESS,
    EventType.RUN_FAILED: RunStatus.FAILED,
    EventType.RUN_CANCELLED: RunStatus.CANCELLED,
}
_EVENT_FOR_STATUS = {status: type for type, status in TERMINAL_RUN_EVENTS.items()}

# The last column is the run's row as the UPDATE left it, as JSON, when it is small enough
# to travel in the completion signal (runs.services.RUN_DONE_SIGNAL_MAX_BYTES); NULL otherwise.
_TERMINAL_SQL = (
    "WITH u AS ({update} RETURNING *){records}, "
    "e AS (INSERT INTO orchestrator_events "
    "(type, organization_id, agent_id, run_id, node_id, payload, created_at) "
    "SELECT %s, u.organization_id, u.agent_id, u.id, u.node_id, %s::jsonb, %s FROM u "
    "RETURNING id, node_id) "
    "SELECT e.id, e.node_id, {tools}, "
    "(SELECT CASE WHEN octet_length(r.j) <= {done_max} THEN r.j END"
    " FROM (SELECT row_to_json(u)::text AS j FROM u) AS r) FROM e"
)


def _run_columns() -> dict:
    global _RUN_FIELDS
    if _RUN_FIELDS is None:
        _RUN_FIELDS = {f.name: f for f in AgentRun._meta.concrete_fields}
    return _RUN_FIELDS


_RUN_FIELDS: dict | None = None


def _run_update_sql(run, values: dict, fence: dict, connection) -> tuple[str, list]:
    """UPDATE agent_runs SET values WHERE id AND fence, as the ORM writes it (its own field
    conversions), without the ORM's query compilation on the hot path."""
    fields = _run_columns()
    set_fields = [fields[name] for name in values]
    sets = [f'"{field.column}" = %s' for field in set_fields]
    params = run_services.db_prep_values(set_fields, list(values.values()), connection)
    where = ['"id" = %s']
    params.append(run.pk)
    fence_fields, fence_values = [], []
    for name, value in fence.items():
        field = fields[name]
        if value is None:
            where.append(f'"{field.column}" IS NULL')
            continue
        where.append(f'"{field.column}" = %s')
        fence_fields.append(field)
        fence_values.append(value)
    params.extend(run_services.db_prep_values(fence_fields, fence_values, connection))
    # Column names come from the model, values are parameters.
    sql = f'UPDATE "{AgentRun._meta.db_table}" SET {", ".join(sets)} WHERE {" AND ".join(where)}'  # noqa: S608
    return sql, params


def run_terminal_write(
    run, values: dict, *, fence: dict, event: dict, now, records: RunRecords | None = None
) -> int:
    """The fenced UPDATE that ends a run, its records and its terminal event: one statement.

    ``fence`` (status, attempt) guards the UPDATE: when the row no longer matches it every
    INSERT selects nothing, so a stale or lost completion writes neither records nor an
    event (the caller publishes run.stale_completion instead). The event is broadcast once
    the transaction commits. Returns the number of runs updated.
    """
    type = _EVENT_FOR_STATUS[values["status"]]
    alias = router.db_for_write(AgentRun)
    connection = connections[alias]
    if connection.vendor != "postgresql":
        # SQLite (the embedded default) has no data-modifying CTE: several statements, one
        # transaction, same rule (no matched row, nothing else written).
        with transaction.atomic(using=alias):
            written = AgentRun.objects.filter(pk=run.pk, **fence).update(**values)
            if written:
                if records:
                    recording_flush(
                        run=run, contexts=records.contexts, extra_metrics=records.extra_metrics
                    )
                publish(
                    type,
                    event,
                    organization=run.organization,
                    agent=run.agent,
                    run=run,
                    node=run.node_id or "",
                )
        return written
    update_sql, update_params = _run_update_sql(run, values, fence, connection)
    ctes = record_ctes(run=run, records=records, now=now) if records else None
    sql = _TERMINAL_SQL.format(
        update=update_sql,
        records="".join(", " + clause for clause in ctes.clauses) if ctes else "",
        # The clause name is a constant of runs.recorder, never input.
        tools=(
            f"(SELECT count(*) FROM {ctes.tool_clause})"  # noqa: S608
            if ctes and ctes.tool_clause
            else "0"
        ),
        done_max=int(run_services.RUN_DONE_SIGNAL_MAX_BYTES),
    )
    params = (*update_params, *(ctes.params if ctes else ()), type, _dumps(event), now)
    with prepared_cursor(connection) as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    if rows and ctes and ctes.tool_clause and rows[0][2] < len(ctes.tool_calls):
        # A tool was deleted since this process last saw it: recreate it, write its calls.
        record_tools_repair(run=run, records=records)
    # An async run's caller may be waiting for it (run_wait): its signal is sent at once.
    now_send = (run.meta or {}).get("mode") == RunMode.ASYNC
    for event_id, node_id, _, done in rows:
        wire = {
            "id": event_id,
            "type": type,
            "organization": str(run.organization_id),
            "agent": str(run.agent_id),
            "run": str(run.pk),
            "node": node_id or None,
            "payload": event,
            "createdAt": now.isoformat(),
        }
        transaction.on_commit(
            lambda wire=wire, done=done: _broadcast(wire, done=done, now=now_send), using=alias
        )
    return len(rows)


def _dumps(value) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


run_services.terminal_writer_install(run_terminal_write)


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
