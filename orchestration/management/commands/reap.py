"""One pass of the fleet's housekeeping, for deployments without Celery beat (cron it)."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from orchestration.services.reaper import node_sweep, runs_reap


class Command(BaseCommand):
    help = (
        "Sweep the nodes (late heartbeats -> UNHEALTHY -> FAILED, failing FAILED nodes over)"
        " and reap runs (expired leases re-queued or FAILED NODE_LOST, PENDING runs nobody"
        " picked up re-enqueued), once. Celery beat does the same every heartbeat interval."
    )

    def handle(self, *args, **options) -> None:
        sweep = node_sweep()
        for node_id in sweep.unhealthy:
            self.stdout.write(f"node {node_id}: UNHEALTHY (heartbeat late)")
        for failover in sweep.failovers:
            self.stdout.write(f"node {failover.node_id}: FAILED; {failover.message}")
        reaped = runs_reap()
        self.stdout.write(
            f"runs: {len(reaped.requeued_running)} re-queued and"
            f" {len(reaped.failed_running)} failed NODE_LOST (lease expired);"
            f" {len(reaped.requeued_pending)} re-enqueued and {len(reaped.failed_pending)}"
            " failed PENDING_TIMEOUT (never picked up)"
        )
        changed = len(sweep.unhealthy) + len(sweep.failed) + reaped.total
        self.stdout.write(self.style.SUCCESS(f"reap: {changed} change(s)"))
