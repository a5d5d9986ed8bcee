"""Celery tasks: they take ids and call one service."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from orchestration.bus import retention
from orchestration.services import reaper
from orchestration.services.execution import run_execute
from runs.choices import RunStatus
from runs.models import AgentRun

logger = logging.getLogger(__name__)


@shared_task(
    name="orchestration.execute_run",
    # Redelivered if the worker dies mid-run; the claim's conditional UPDATE keeps it single.
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def execute_run(run_id: str) -> str:
    run = (
        AgentRun.objects.select_related("agent", "organization", "dataset")
        .filter(pk=run_id)
        .first()
    )
    if run is None:
        logger.warning("execute_run: run %s does not exist", run_id)
        return "missing"
    if run.status != RunStatus.PENDING:
        return f"skipped:{run.status}"
    executed = run_execute(run=run, node_id=settings.ORCHESTRATOR_NODE_ID)
    return run.status if executed else "not-claimed"


# The fleet's housekeeping, run by Celery beat every heartbeat interval (settings
# CELERY_BEAT_SCHEDULE); `python manage.py reap` does the same without beat. The
# reaper needs execute_run and these tasks need the reaper: the two import each other
# as modules, never names, so either may be imported first.


@shared_task(name="orchestration.node_sweep", ignore_result=True)
def node_sweep() -> dict:
    result = reaper.node_sweep()
    return {
        "unhealthy": result.unhealthy,
        "failed": result.failed,
        "reassignedRuns": sum(f.reassigned_runs for f in result.failovers),
    }


@shared_task(name="orchestration.runs_reap", ignore_result=True)
def runs_reap() -> dict:
    result = reaper.runs_reap()
    return {
        "requeuedRunning": len(result.requeued_running),
        "failedRunning": len(result.failed_running),
        "requeuedPending": len(result.requeued_pending),
        "failedPending": len(result.failed_pending),
    }


@shared_task(name="orchestration.events_prune", ignore_result=True)
def events_prune() -> dict:
    """Retention of the event log (beat, hourly): the same service as `prune_events`."""
    result = retention.events_prune()
    return {"deleted": result.deleted, "batches": result.batches}
