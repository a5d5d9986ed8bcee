"""Writes of the runs app: the run lifecycle with conditional updates, cancellation, retry."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.cache import cache
from django.utils import timezone

from runs.choices import ACTIVE_RUN_STATES, RunStatus
from runs.models import AgentRun

CANCEL_FLAG_TTL = 24 * 3600


class RunNotActive(Exception):
    """The run already ended; it cannot be cancelled."""


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def input_hash(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def run_create(
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
) -> AgentRun:
    """Insert the PENDING run: it exists before anything is dispatched."""
    now = timezone.now()
    return AgentRun.objects.create(
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
    )


def run_claim(*, run: AgentRun, node_id: str, lease_seconds: int) -> bool:
    """Atomically move PENDING -> RUNNING; two workers can never both claim one run.

    The attempt number goes up on every claim and fences the finish: only the
    holder of the current attempt may write the outcome.
    """
    now = timezone.now()
    claimed = AgentRun.objects.filter(
        pk=run.pk, status=RunStatus.PENDING, attempt=run.attempt
    ).update(
        status=RunStatus.RUNNING,
        node_id=node_id,
        started_at=now,
        attempt=run.attempt + 1,
        lease_expires_at=now + timedelta(seconds=lease_seconds),
        updated_at=now,
    )
    if claimed != 1:
        return False
    run.mark_running(node_id=node_id, now=now)
    run.lease_expires_at = now + timedelta(seconds=lease_seconds)
    return True


@dataclass(frozen=True)
class RunOutcome:
    status: str
    output: Any = None
    error_code: str = ""
    error_message: str = ""


def run_finish(
    *, run: AgentRun, outcome: RunOutcome, metrics: dict, meta: dict, now: datetime | None = None
) -> bool:
    """Write the outcome with one conditional UPDATE; False when this attempt is stale.

    The WHERE clause is the fence: a run reassigned to another node (attempt moved on)
    or already ended is left untouched, so no run ends with two owners' results.
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
    written = AgentRun.objects.filter(
        pk=run.pk, status=RunStatus.RUNNING, attempt=run.attempt
    ).update(**values)
    return written == 1


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
    return AgentRun.objects.filter(pk=run.pk, status=RunStatus.PENDING).update(**values) == 1


def _cancel_flag_key(run_id) -> str:
    return f"run-cancel:{run_id}"


def run_cancel_requested(run_id) -> bool:
    """Shared across processes through the cache (Redis in production)."""
    return bool(cache.get(_cancel_flag_key(run_id)))


def run_cancel(*, run: AgentRun) -> AgentRun:
    """PENDING ends CANCELLED at once; RUNNING is asked to stop (ctx.cancelled), then ends."""
    now = timezone.now()
    cancelled = AgentRun.objects.filter(pk=run.pk, status=RunStatus.PENDING).update(
        status=RunStatus.CANCELLED,
        completed_at=now,
        cancel_requested_at=now,
        updated_at=now,
        error_code="CANCELLED",
        error_message="Cancelled before it started.",
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
