"""Celery tasks: they take ids and call one service."""

from __future__ import annotations

import logging

from celery import shared_task, signals
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections

from orchestration import bus
from orchestration.bus import retention
from orchestration.services import reaper
from orchestration.services.execution import run_execute
from runs import services as run_services

logger = logging.getLogger(__name__)


@signals.worker_process_shutdown.connect
def events_flush(**kwargs) -> None:
    """A pool process stops: send the events it committed before it goes."""
    bus.broadcast_flush(2.0)


@shared_task(
    name="orchestration.execute_run",
    bind=True,
    # Redelivered if the worker dies mid-run; the claim's conditional UPDATE keeps it single.
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    # The database unreachable (a restart, a failover): try again shortly rather than
    # drop the message. The broken connection is closed at the start of the next try
    # (close_old_connections below). Past the last try the reaper still re-enqueues a
    # PENDING run and takes back a RUNNING one whose lease ran out.
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=1,
    retry_backoff_max=10,
    retry_jitter=True,
    max_retries=12,
)
def execute_run(self, run_id: str) -> str:
    if not (self.request.is_eager or self.request.called_directly):
        # Workers keep their connection across tasks (settings.CELERY_DB_REUSE_MAX): it is
        # dropped here, as Django does per request, once too old or broken (a failed try
        # leaves it marked, so the retry reconnects).
        close_old_connections()
    # Claimed and read in one statement (with its agent, config rows and organization).
    run, why_not = run_services.run_claim_queued(
        run_id=run_id,
        node_id=settings.ORCHESTRATOR_NODE_ID,
        lease_seconds=settings.RUN_LEASE_SECONDS,
    )
    if run is None:
        if why_not == "missing":
            logger.warning("execute_run: run %s does not exist", run_id)
        return why_not
    run_execute(run=run, node_id=settings.ORCHESTRATOR_NODE_ID, claimed=True)
    return run.status


# The fleet's housekeeping, run by Celery beat every heartbeat interval (settings
# CELERY_BEAT_SCHEDULE); `python manage.py reap` does the same without beat. The
# reaper needs execute_run and these tasks need the reaper: the two import each other
# as modules, never names, so either may be imported first.


def _connection_refresh(task) -> None:
    """As execute_run does: a connection broken by a database restart is dropped here, so
    a pool process whose last tasks were housekeeping does not fail on it for ever."""
    if not (task.request.is_eager or task.request.called_directly):
        close_old_connections()


@shared_task(name="orchestration.node_sweep", ignore_result=True, bind=True)
def node_sweep(self) -> dict:
    _connection_refresh(self)
    result = reaper.node_sweep()
    return {
        "unhealthy": result.unhealthy,
        "failed": result.failed,
        "reassignedRuns": sum(f.reassigned_runs for f in result.failovers),
    }


@shared_task(name="orchestration.runs_reap", ignore_result=True, bind=True)
def runs_reap(self) -> dict:
    _connection_refresh(self)
    result = reaper.runs_reap()
    return {
        "requeuedRunning": len(result.requeued_running),
        "failedRunning": len(result.failed_running),
        "requeuedPending": len(result.requeued_pending),
        "failedPending": len(result.failed_pending),
    }


@shared_task(name="orchestration.events_prune", ignore_result=True, bind=True)
def events_prune(self) -> dict:
    """Retention of the event log (beat, hourly): the same service as `prune_events`."""
    _connection_refresh(self)
    result = retention.events_prune()
    return {"deleted": result.deleted, "batches": result.batches}
