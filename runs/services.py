"""Writes of the runs app: the run lifecycle with conditional updates, cancellation, retry."""

from __future__ import annotations

import functools
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import connections, models, router, transaction
from django.utils import timezone

from agents.models import Agent, AgentConfig, Organization
from runs.choices import ACTIVE_RUN_STATES, RunStatus
from runs.models import AgentRun
from runs.recorder import RunRecords, recording_flush
from runs.sql import fetch_instances, json_object, model_columns, prepared_cursor, row_instance

CANCEL_FLAG_TTL = 24 * 3600


# How a run's terminal transition is written. The bus (orchestration.bus, installed when
# it is imported, i.e. at app start) replaces the plain UPDATE with one statement that also
# records the run's terminal event (run.succeeded / run.failed / run.cancelled) when, and
# only when, the fenced UPDATE matched the row. The runs app itself knows nothing of events.
# A writer is called as writer(run, values, fence=, event=, now=, records=) and returns the
# number of rows updated (0 or 1): it sets ``values`` on the run's row where the row still
# matches ``fence`` (e.g. status RUNNING and this attempt); ``event`` is the event's payload
# and ``records`` what the run recorded (RunRecords or None), written only if the row matched.
TerminalWriter = Callable[..., int]


def _plain_update(
    run, values: dict, *, fence: dict, event: dict, now: datetime, records: RunRecords | None = None
) -> int:
    with transaction.atomic():
        written = AgentRun.objects.filter(pk=run.pk, **fence).update(**values)
        if written and records:
            recording_flush(run=run, contexts=records.contexts, extra_metrics=records.extra_metrics)
    return written


_terminal_writer: TerminalWriter = _plain_update


def terminal_writer_install(writer: TerminalWriter | None) -> None:
    """Install how terminal transitions are written (None: back to the plain UPDATE)."""
    global _terminal_writer
    _terminal_writer = writer or _plain_update


def _terminal_event(run: AgentRun, *, attempt: int) -> dict:
    return {
        "status": run.status,
        "errorCode": run.error_code or None,
        "durationMs": run.duration_ms,
        "attempt": attempt,
        "intent": run.intent,
    }


class RunNotActive(Exception):
    """The run already ended; it cannot be cancelled."""


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def input_hash(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def _run_build(
    *,
    organization,
    agent,
    intent: str,
    input: Any,
    mode: str,
    user=None,
    dataset=None,
    objective: str = "",
    meta: dict | None = None,
    idempotency_key: str | None = None,
    retry_of: AgentRun | None = None,
    request_fingerprint: str | None = None,
    node_id: str = "",
    claimed_by: str = "",
    lease_seconds: int = 0,
) -> AgentRun:
    """The run as run_create() inserts it. ``node_id``: the node an async run was routed
    to (its own queue), if any.

    ``claimed_by``: the node that executes the run at once in this process (a sync run).
    The row is then inserted as run_claim would leave it (RUNNING, attempt 1, that node,
    a lease of ``lease_seconds``): the claim cannot race anybody for a row nobody else has
    seen, so it costs no statement of its own. A process that dies holding it is handled
    like any claimed run: its lease expires and the reaper re-queues or fails it.
    """
    now = timezone.now()
    run = AgentRun(
        organization=organization,
        agent=agent,
        intent=intent,
        input=input,
        input_hash=request_fingerprint or input_hash(input),
        user=user if getattr(user, "pk", None) else None,
        dataset=dataset,
        objective=objective,
        meta={"mode": mode, "intent": intent, **(meta or {})},
        idempotency_key=idempotency_key,
        retry_of=retry_of,
        status=RunStatus.PENDING,
        queued_at=now,
        node_id=node_id,
        created_at=now,
        updated_at=now,
    )
    if claimed_by:
        run.mark_running(node_id=claimed_by, now=now)
        run.lease_expires_at = now + timedelta(seconds=lease_seconds)
    return run


def run_create(**create) -> AgentRun:
    """Insert the run (see _run_build for the arguments): it exists before anything is
    dispatched. On PostgreSQL one INSERT, committed on its own outside a transaction."""
    run = _run_build(**create)
    _run_insert(run, None)
    return run


def run_create_reading(read_after: tuple[str, Sequence], **create) -> tuple[AgentRun, list]:
    """run_create(), and the rows of ``read_after`` (a SELECT and its parameters), read in
    the same statement on PostgreSQL (``WITH inserted AS (INSERT ...) SELECT ...``): the
    async submission inserts its run and reads the routable nodes in one round trip.
    Elsewhere the SELECT runs after the insert."""
    run = _run_build(**create)
    rows = _run_insert(run, read_after)
    if rows is None:
        with connections[router.db_for_read(AgentRun)].cursor() as cursor:
            cursor.execute(*read_after)
            rows = cursor.fetchall()
    return run, rows


def _run_insert(run: AgentRun, read_after: tuple[str, Sequence] | None) -> list | None:
    alias = router.db_for_write(AgentRun)
    connection = connections[alias]
    if connection.vendor != "postgresql":
        run.save(force_insert=True, using=alias)
        return None
    # The hot path: the INSERT the ORM would write (its own field conversions), without
    # compiling it on every run. No signal listens to AgentRun saves.
    fields = _run_fields()
    sql = _insert_sql()
    params = db_prep_values(fields, [getattr(run, f.attname) for f in fields], connection)
    if read_after is not None:
        sql = f"WITH inserted AS ({sql} RETURNING 1) {read_after[0]}"
        params = [*params, *read_after[1]]
    with prepared_cursor(connection) as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall() if read_after is not None else None
    run._state.adding = False
    run._state.db = alias
    return rows


_RUN_FIELDS: list | None = None
_INSERT_SQL: str | None = None

# Python types a field of this class stores unchanged on PostgreSQL: get_db_prep_save() of
# such a value returns it as it is (after checks that cannot fail for it), so the hot path
# passes it straight to the driver. Any other value -- None aside -- and every field class
# not listed (JSON above all) goes through the field's own get_db_prep_save().
_TEXT: tuple[type, ...] = (str,)
_DATETIME: tuple[type, ...] = (datetime,)
_PLAIN_TYPES: dict[type, tuple[type, ...]] = {
    models.UUIDField: (uuid.UUID,),
    models.CharField: _TEXT,
    models.SlugField: _TEXT,
    models.TextField: _TEXT,
    models.BooleanField: (bool,),
}  # (integers are not: Django wraps them in the driver's sized types, Int4 and the like)


@functools.cache
def _plain_types(field) -> tuple[type, ...]:
    target = field.target_field if field.is_relation else field
    if isinstance(target, models.DateTimeField):
        return _DATETIME
    return _PLAIN_TYPES.get(type(target), ())


def db_prep_values(fields, values, connection) -> list:
    """``[f.get_db_prep_save(v, connection) for f, v in zip(fields, values)]`` on PostgreSQL,
    without the per-value work for values stored as they are (None, and a value of the
    field's own plain type -- an aware datetime for a DateTimeField)."""
    prepared = []
    for field, value in zip(fields, values, strict=True):
        if value is None:
            prepared.append(None)
            continue
        kinds = _plain_types(field)
        if kinds is _TEXT:
            plain = isinstance(value, str)  # choices (str enums) are stored as they are too
        elif kinds is _DATETIME:
            plain = type(value) is datetime and value.tzinfo is not None
        else:
            plain = type(value) in kinds
        if plain:
            prepared.append(value)
        else:
            prepared.append(field.get_db_prep_save(value, connection))
    return prepared


def _run_fields() -> list:
    global _RUN_FIELDS
    if _RUN_FIELDS is None:
        _RUN_FIELDS = list(AgentRun._meta.concrete_fields)
    return _RUN_FIELDS


def _insert_sql() -> str:
    global _INSERT_SQL
    if _INSERT_SQL is None:
        fields = _run_fields()
        columns = ", ".join(f'"{f.column}"' for f in fields)
        # Column names come from the model; values are parameters.
        _INSERT_SQL = (
            f'INSERT INTO "{AgentRun._meta.db_table}" ({columns}) '  # noqa: S608
            f"VALUES ({', '.join(['%s'] * len(fields))})"
        )
    return _INSERT_SQL


_CLAIM_SQL = (
    "UPDATE agent_runs SET status = %s, node_id = %s, started_at = %s, attempt = %s,"
    " lease_expires_at = %s, updated_at = %s WHERE id = %s AND status = %s AND attempt = %s"
)


def run_claim(*, run: AgentRun, node_id: str, lease_seconds: int) -> bool:
    """Atomically move PENDING -> RUNNING; two workers can never both claim one run.

    The attempt number goes up on every claim and fences the finish: only the
    holder of the current attempt may write the outcome.
    """
    now = timezone.now()
    lease = now + timedelta(seconds=lease_seconds)
    connection = connections[router.db_for_write(AgentRun)]
    if connection.vendor == "postgresql":
        # The hot path: the statement as the ORM would write it, without compiling it.
        with prepared_cursor(connection) as cursor:
            cursor.execute(
                _CLAIM_SQL,
                (
                    RunStatus.RUNNING,
                    node_id,
                    now,
                    run.attempt + 1,
                    lease,
                    now,
                    run.pk,
                    RunStatus.PENDING,
                    run.attempt,
                ),
            )
            claimed = cursor.rowcount
    else:
        claimed = AgentRun.objects.filter(
            pk=run.pk, status=RunStatus.PENDING, attempt=run.attempt
        ).update(
            status=RunStatus.RUNNING,
            node_id=node_id,
            started_at=now,
            attempt=run.attempt + 1,
            lease_expires_at=lease,
            updated_at=now,
        )
    if claimed != 1:
        return False
    run.mark_running(node_id=node_id, now=now)
    run.lease_expires_at = lease
    return True


@functools.cache
def _claim_queued_sql() -> str:
    runs, agents, orgs = (m._meta.db_table for m in (AgentRun, Agent, Organization))
    columns = ", ".join(model_columns(m)[0] for m in (AgentRun, Agent, Organization))
    # Table and column names come from the models; values are parameters.
    return (
        f'UPDATE "{runs}" SET status = %s, node_id = %s, started_at = %s,'  # noqa: S608
        f' attempt = "{runs}".attempt + 1, lease_expires_at = %s, updated_at = %s'
        f' FROM "{agents}", "{orgs}",'
        # This statement's transaction alone commits without waiting for its WAL to reach
        # the disk (SET LOCAL): see run_claim_queued.
        " (SELECT set_config('synchronous_commit', 'off', true)) AS claim_commit"
        f' WHERE "{runs}".id = %s AND "{runs}".status = %s'
        f' AND "{agents}".id = "{runs}".agent_id AND "{orgs}".id = "{runs}".organization_id'
        f" RETURNING {columns}, (SELECT jsonb_object_agg(c.key, c.value)"
        f' FROM "{AgentConfig._meta.db_table}" c WHERE c.agent_id = "{agents}".id)'
    )


def run_claim_queued(*, run_id, node_id: str, lease_seconds: int) -> tuple[AgentRun | None, str]:
    """Claim a queued run by its id and read it: (the run, "") or (None, why not).

    What a worker does with a task's run id. On PostgreSQL one statement: run_claim's
    conditional UPDATE (PENDING -> RUNNING, attempt + 1, this node, a lease) RETURNING the
    claimed row with its agent, the agent's config rows (``agent.config_rows``) and its
    organization; a dataset, if any, is read when used. Not claimed: ``"missing"`` or
    ``"skipped:<status>"`` (it is not PENDING: another worker has it, or it ended).

    Its transaction commits without waiting for the disk (SET LOCAL synchronous_commit off):
    a crash of the server may lose the claim, never the run, which was committed PENDING
    when accepted and is then re-enqueued by the reaper (docs/RUNS.md, step 7); the
    fenced finish commits synchronously.
    """
    connection = connections[router.db_for_write(AgentRun)]
    if connection.vendor != "postgresql":
        run = AgentRun.objects.select_related("agent", "organization").filter(pk=run_id).first()
        if run is None:
            return None, "missing"
        if run.status != RunStatus.PENDING:
            return None, f"skipped:{run.status}"
        if not run_claim(run=run, node_id=node_id, lease_seconds=lease_seconds):
            run.refresh_from_db()
            return None, f"skipped:{run.status}"
        return run, ""
    now = timezone.now()
    with prepared_cursor(connection) as cursor:
        cursor.execute(
            _claim_queued_sql(),
            (
                RunStatus.RUNNING,
                node_id,
                now,
                now + timedelta(seconds=lease_seconds),
                now,
                run_id,
                RunStatus.PENDING,
            ),
        )
        row = cursor.fetchone()
    if row is None:
        status = AgentRun.objects.filter(pk=run_id).values_list("status", flat=True).first()
        return None, "missing" if status is None else f"skipped:{status}"
    sizes = [len(model_columns(m)[1]) for m in (AgentRun, Agent)]
    run = row_instance(AgentRun, row)
    agent = row_instance(Agent, row[sizes[0] :])
    organization = row_instance(Organization, row[sizes[0] + sizes[1] :])
    agent.config_rows = json_object(row[-1])
    run.agent, run.organization = agent, organization
    return run, ""


@dataclass(frozen=True)
class RunOutcome:
    status: str
    output: Any = None
    error_code: str = ""
    error_message: str = ""


def run_finish(
    *,
    run: AgentRun,
    outcome: RunOutcome,
    metrics: dict,
    meta: dict,
    now: datetime | None = None,
    records: RunRecords | None = None,
    unless_cancel_requested: bool = False,
) -> bool:
    """Write the outcome with one conditional UPDATE; False when this attempt is stale.

    ``unless_cancel_requested``: also fenced on the row recording no cancellation request
    (False then too: the caller checks run_cancel_recorded and finishes CANCELLED).

    The WHERE clause is the fence: a run reassigned to another node (attempt moved on)
    or already ended is left untouched, so no run ends with two owners' results. What the
    run recorded (``records``) and its terminal event are written with the outcome, and
    only with it: on PostgreSQL in the same statement (orchestration.bus).
    """
    now = now or timezone.now()
    if outcome.status == RunStatus.SUCCESS:
        fields = run.mark_succeeded(output=outcome.output, now=now)
    elif outcome.status == RunStatus.CANCELLED:
        fields = run.mark_cancelled(now=now)
    else:
        fields = run.mark_failed(
            error_code=outcome.error_code, error_message=outcome.error_message[:10_000], now=now
        )
    run.metrics = metrics
    run.meta = meta
    run.updated_at = now
    values = {name: getattr(run, name) for name in {*fields, "metrics", "meta"}}
    values["updated_at"] = now
    written = _terminal_writer(
        run,
        values,
        fence={
            "status": RunStatus.RUNNING,
            "attempt": run.attempt,
            **({"cancel_requested_at": None} if unless_cancel_requested else {}),
        },
        event=_terminal_event(run, attempt=run.attempt),
        now=now,
        records=records,
    )
    return written == 1


def run_cancel_recorded(run: AgentRun) -> bool:
    """Whether this attempt's run is still RUNNING with a cancellation request on its row."""
    return AgentRun.objects.filter(
        pk=run.pk,
        status=RunStatus.RUNNING,
        attempt=run.attempt,
        cancel_requested_at__isnull=False,
    ).exists()


def run_fail_pending(
    *, run: AgentRun, error_code: str, error_message: str, meta: dict | None = None
) -> bool:
    """End a run that was never claimed (e.g. dispatch impossible)."""
    now = timezone.now()
    fields = run.mark_failed(error_code=error_code, error_message=error_message, now=now)
    if meta is not None:
        run.meta = meta
    values = {name: getattr(run, name) for name in fields}
    values["meta"] = run.meta
    values["updated_at"] = now
    written = _terminal_writer(
        run,
        values,
        fence={"status": RunStatus.PENDING},
        event=_terminal_event(run, attempt=run.attempt),
        now=now,
    )
    return written == 1


def _cancel_flag_key(run_id) -> str:
    return f"run-cancel:{run_id}"


def run_cancel_requested(run_id) -> bool:
    """Shared across processes through the cache (Redis in production)."""
    return bool(cache.get(_cancel_flag_key(run_id)))


def run_cancel(*, run: AgentRun) -> AgentRun:
    """PENDING ends CANCELLED at once; RUNNING is asked to stop (ctx.cancelled), then ends."""
    now = timezone.now()
    cancelled = _terminal_writer(
        run,
        {
            "status": RunStatus.CANCELLED,
            "completed_at": now,
            "cancel_requested_at": now,
            "updated_at": now,
            "error_code": "CANCELLED",
            "error_message": "Cancelled before it started.",
        },
        fence={"status": RunStatus.PENDING},
        event={
            "status": RunStatus.CANCELLED,
            "errorCode": "CANCELLED",
            "durationMs": None,
            "attempt": run.attempt,
            "intent": run.intent,
        },
        now=now,
    )
    if not cancelled:
        requested = AgentRun.objects.filter(
            pk=run.pk, status=RunStatus.RUNNING, cancel_requested_at__isnull=True
        ).update(cancel_requested_at=now, updated_at=now)
        if requested:
            cache.set(_cancel_flag_key(run.pk), 1, CANCEL_FLAG_TTL)
    run.refresh_from_db()
    if run.status not in ACTIVE_RUN_STATES and run.cancel_requested_at is None:
        raise RunNotActive(f"run {run.pk} already ended with status {run.status}")
    return run


# --- waiting for a run to end ------------------------------------------------------------

# When a run's terminal event is broadcast (orchestration.bus, after commit), its completion
# signal is pushed onto this Redis list; it lives RUN_DONE_TTL_S. Waiters read it with a
# blocking, non-destructive BLMOVE (the list rotates onto itself), so any number of them
# wake on the one push. The signal is the run's row as the finishing statement wrote it
# (PostgreSQL's row_to_json, read back by that statement), so a waiter holds the ended run
# without reading it; a row larger than RUN_DONE_SIGNAL_MAX_BYTES (a big output), or a run
# ended otherwise (SQLite, the reaper), pushes its status alone and the waiter reads the row.
# The list is for waiters already waiting when the run ends (or arriving just after): a row
# is 1-2 KB, so at 400 runs/s two minutes of signals hold ~100 MB of Redis memory at most
# (an hour would hold gigabytes). A waiter arriving later reads the ended row first, or,
# holding a stale instance, within RUN_WAIT_RECHECK_S.
RUN_DONE_TTL_S = 120
RUN_DONE_SIGNAL_MAX_BYTES = 16 * 1024
# A run that ends without the push (the reaper ends lost runs) is still seen: the waiter
# re-reads the row at least this often.
RUN_WAIT_RECHECK_S = 2.0

_wait_redis = None
_wait_redis_lock = threading.Lock()


def run_done_key(run_id) -> str:
    return f"acp:run-done:{run_id}"


def _wait_client():
    global _wait_redis
    if _wait_redis is None:
        with _wait_redis_lock:
            if _wait_redis is None:
                import redis

                # Each BLMOVE blocks RUN_WAIT_RECHECK_S at most; the socket allows for that.
                _wait_redis = redis.Redis.from_url(
                    settings.REDIS_URL,
                    socket_connect_timeout=1,
                    socket_timeout=RUN_WAIT_RECHECK_S + 2,
                )
    return _wait_redis


@functools.cache
def _run_by_pk_sql() -> str:
    # Table and column names come from the model; the id is a parameter.
    return f'SELECT {model_columns(AgentRun)[0]} FROM "{AgentRun._meta.db_table}" WHERE id = %s'  # noqa: S608


def _run_read(run_id) -> AgentRun | None:
    """The run's row as it is now. On PostgreSQL one hand-written SELECT made a model with
    Model.from_db (runs.sql): the ORM's compilation of .filter(pk=).first() costs a waiter
    more than the query, on a machine whose cores the run's own worker needs meanwhile."""
    pk = run_id if isinstance(run_id, uuid.UUID) else uuid.UUID(str(run_id))
    if connections[router.db_for_read(AgentRun)].vendor != "postgresql":
        return AgentRun.objects.filter(pk=pk).first()
    runs = fetch_instances(AgentRun, _run_by_pk_sql(), [pk])
    return runs[0] if runs else None


def _run_from_signal(value: bytes, run_id, held: AgentRun | None) -> AgentRun | None:
    """The ended run a completion signal carries (its row as JSON), or None when the signal
    is a bare status or not this run's ended row (the caller reads the row then). The
    agent and organization the caller's instance holds are kept on the new one."""
    if not value.startswith(b"{"):
        return None
    try:
        data = json.loads(value)
        if data.get("id") != str(run_id):
            return None
        _, names, _ = model_columns(AgentRun)
        values = [field.to_python(data[field.column]) for field in AgentRun._meta.concrete_fields]
    except (ValueError, KeyError, TypeError, ValidationError):
        return None
    run = AgentRun.from_db(router.db_for_read(AgentRun), names, values)
    if not run.is_terminal:
        return None
    if held is not None:
        for name in ("agent", "organization"):
            field = AgentRun._meta.get_field(name)
            same = getattr(held, field.attname) == getattr(run, field.attname)
            if same and field.is_cached(held):
                field.set_cached_value(run, field.get_cached_value(held))
    return run


def run_wait(run_id, timeout: float) -> AgentRun | None:
    """Block until the run is terminal or ``timeout`` seconds pass; return the run as it is.

    ``run_id``: the run's id, or the run itself as the caller holds it (the one
    orchestrate() returned): then it is not read before the wait.
    With Redis the wake-up is pushed (no polling): the finishing process pushes the run's
    completion signal onto its done key once its outcome is committed, and the run is built
    from it (its row, as written) or, for a bare status, read once. Embedded (no REDIS_URL):
    the row is polled with a growing interval (5 ms up to 200 ms). None if the run does not
    exist.
    """
    deadline = time.monotonic() + max(0.0, timeout)
    held = None
    if isinstance(run_id, AgentRun):
        held = run = run_id
        run_id = run.pk
    else:
        try:
            run = _run_read(run_id)
        except ValueError:
            return None  # not a run id
    if run is None or run.is_terminal:
        return run
    run_id = run.pk
    if not settings.REDIS_URL:
        interval = 0.005
        while time.monotonic() < deadline:
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(interval * 2, 0.2)
            run.refresh_from_db()
            if run.is_terminal:
                return run
        return run
    client = _wait_client()
    key = run_done_key(run_id)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return run
        try:
            # BLMOVE's timeout has a resolution of 10 ms at best; 0 would block forever.
            pushed = client.blmove(
                key, key, max(0.01, min(remaining, RUN_WAIT_RECHECK_S)), "RIGHT", "LEFT"
            )
        except Exception:  # Redis unavailable: fall back on the row
            pushed = None
            time.sleep(min(0.2, max(0.0, remaining)))
        ended = _run_from_signal(pushed, run_id, held) if pushed is not None else None
        if ended is not None:
            return ended
        run = _run_read(run_id) or run
        if run.is_terminal or pushed is not None:
            return run
