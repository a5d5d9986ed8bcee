"""Retention of the event log: rows older than events.retention_days are deleted in batches.

Batches keep every DELETE short -- a few thousand rows, its own transaction -- so pruning
a large backlog never holds locks for long nor builds one huge WAL burst. The command
`prune_events` and the beat task `orchestration.events_prune` both call events_prune().
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone

from orchestration.models import OrchestratorEvent
from orchestration.services.config import config_current

DEFAULT_BATCH = 5000


@dataclass(frozen=True)
class PruneResult:
    cutoff: datetime
    deleted: int
    batches: int
    dry_run: bool


def retention_days_live() -> int:
    return int(config_current()["events"]["retention_days"])


def events_prune(
    *,
    days: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    dry_run: bool = False,
    now: datetime | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> PruneResult:
    """Delete events created more than ``days`` (default: the live configuration) ago.

    on_batch(batch_number, rows_deleted) is called after each batch (progress output).
    With dry_run nothing is deleted and ``deleted`` is what would be.
    """
    days = retention_days_live() if days is None else int(days)
    if days < 1:
        raise ValueError("retention is at least one day")
    if batch_size < 1:
        raise ValueError("the batch size is at least one row")
    cutoff = (now or timezone.now()) - timedelta(days=days)
    # event_created_idx serves both the count and each batch's oldest-first slice.
    expired = OrchestratorEvent.objects.filter(created_at__lt=cutoff)
    if dry_run:
        return PruneResult(cutoff=cutoff, deleted=expired.count(), batches=0, dry_run=True)

    deleted = batches = 0
    while True:
        # DELETE ... WHERE id IN (SELECT id ... ORDER BY created_at LIMIT n): one statement
        # per batch, in autocommit, so each batch commits on its own.
        batch = expired.order_by("created_at").values("id")[:batch_size]
        count, _ = OrchestratorEvent.objects.filter(id__in=batch).delete()
        if count == 0:
            break
        deleted += count
        batches += 1
        if on_batch is not None:
            on_batch(batches, count)
        if count < batch_size:
            break
    return PruneResult(cutoff=cutoff, deleted=deleted, batches=batches, dry_run=False)
