"""Nothing stays RUNNING or PENDING forever: the expiry sweep, failover and the reaper.

- node_sweep: nodes whose heartbeat is too old become UNHEALTHY, then FAILED; a node
  turning FAILED is failed over at once.
- node_failover: the node's RUNNING runs go back to PENDING (attempts left) or end
  FAILED NODE_LOST, and, with its PENDING runs, are re-enqueued on a backup node.
- runs_reap: RUNNING runs whose lease expired are handled the same way; PENDING runs
  nobody picked up within pending_timeout_s are re-enqueued, a bounded number of times.

Work is taken in batches with select_for_update(skip_locked=True): a row locked by a
worker that is finishing the run right now (run_finish holds the row until it commits)
or by another reaper is skipped, never waited on, and whatever we then write is fenced
again on (status, attempt). The re-queued run is claimed afresh by run_claim, which
bumps the attempt, so the lost owner's late finish matches nothing and is discarded.

node_sweep lives here rather than in services/nodes.py because it fails nodes over,
and failover enqueues Celery tasks; nodes.py stays free of that so the node runtime
(which run_execute starts) can import it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import models, transaction
from django.utils import timezone

from agents.models import Agent
from orchestration import bus, sending
from orchestration.choices import EventType, NodeStatus
from orchestration.models import OrchestratorNode
from orchestration.queues import default_queue, node_queue, region_queue
from orchestration.services.config import agent_policy_live, config_current
from orchestration.services.nodes import NodeNotFound, node_status_event
from orchestration.services.resolution import agent_effective_config
from runs.choices import RunStatus
from runs.models import AgentRun

logger = logging.getLogger(__name__)

BATCH_SIZE = 200
# An event lists at most this many run ids; the counts are always complete.
EVENT_ID_LIMIT = 500

NODE_LOST = "NODE_LOST"
PENDING_TIMEOUT = "PENDING_TIMEOUT"
# Where runs_reap counts how often a PENDING run was re-enqueued after pending_timeout_s.
REQUEUE_COUNT_KEY = "requeues"

# Nodes the sweep watches: they are supposed to heartbeat.
SWEPT_NODE_STATES = (NodeStatus.ACTIVE, NodeStatus.DRAINING, NodeStatus.UNHEALTHY)


def _fleet_settings() -> dict:
    return config_current()["nodes"]


# --- re-enqueueing -------------------------------------------------------------------


@dataclass(frozen=True)
class RequeueTarget:
    node: OrchestratorNode | None
    queue: str

    @property
    def node_id(self) -> str:
        """The node a re-queued run names: only when it waits on that node's own queue."""
        if self.node is not None and self.queue == node_queue(self.node.node_id):
            return self.node.node_id
        return ""


def _advertised_queues(node: OrchestratorNode) -> list[str]:
    queues = (node.metadata or {}).get("queues") if isinstance(node.metadata, dict) else None
    return [q for q in queues if isinstance(q, str)] if isinstance(queues, list) else []


def backup_node_pick(
    *, exclude: str, region: str | None, now: datetime | None = None
) -> OrchestratorNode | None:
    """The node that takes over a lost node's runs, or None.

    ACTIVE, heartbeat fresher than unhealthy_after_intervals (a node the sweep has not
    marked yet may be just as dead), consuming at least one queue (metadata["queues"],
    which workers advertise; an API process consumes none), not the lost node. Same region
    first, then the most headroom (capacity - active runs), then the lowest id.
    """
    now = now or timezone.now()
    fleet = _fleet_settings()
    fresh_since = now - timedelta(
        seconds=float(fleet["heartbeat_interval_s"]) * float(fleet["unhealthy_after_intervals"])
    )
    # node_status_heartbeat_idx; the fleet is tens of rows, the ranking is done here.
    candidates = [
        node
        for node in OrchestratorNode.objects.filter(
            status=NodeStatus.ACTIVE, last_heartbeat_at__gte=fresh_since
        ).exclude(node_id=exclude)
        if _advertised_queues(node)
    ]
    if not candidates:
        return None
    return min(
        candidates,
        key=lambda n: (
            0 if region and n.region == region else 1,
            -(int(n.capacity) - int(n.active_runs)),
            n.node_id,
        ),
    )


def _target_for(backup: OrchestratorNode | None) -> RequeueTarget:
    """The backup's own queue, else its region's, else the default queue (every worker's)."""
    if backup is None:
        return RequeueTarget(node=None, queue=default_queue())
    advertised = _advertised_queues(backup)
    for queue in (node_queue(backup.node_id), region_queue(backup.region)):
        if queue in advertised:
            return RequeueTarget(node=backup, queue=queue)
    return RequeueTarget(node=backup, queue=default_queue())


def _time_limits(agent_ids: set) -> dict:
    """The agent's total timeout, for the Celery backstop limits (as run_enqueue sets)."""
    agents = Agent.objects.filter(pk__in=agent_ids).prefetch_related("config_entries")
    return {a.pk: agent_policy_live(agent_effective_config(a)).total_timeout_s for a in agents}


def runs_dispatch(*, runs: list[tuple[str, object]], queue: str) -> None:
    """Enqueue (run id, agent id) pairs on a queue once the surrounding transaction commits.

    run_enqueue (dispatch.py) routes new runs; a re-queued run goes where failover
    decided, so it is sent here, with the same time limits run_enqueue would set.
    """
    if not runs:
        return
    limits = _time_limits({agent_id for _, agent_id in runs})

    def send() -> None:
        for run_id, agent_id in runs:
            total = limits.get(agent_id)
            options = {"queue": queue}
            if total is not None:
                options.update(soft_time_limit=total + 10, time_limit=total + 30)
            sending.execute_run_send(str(run_id), **options)

    transaction.on_commit(send)


# --- moving RUNNING runs -----------------------------------------------------------------


@dataclass
class MoveCounts:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def merge(self, other: MoveCounts) -> None:
        self.requeued.extend(other.requeued)
        self.failed.extend(other.failed)


def _fail_lost(run: AgentRun, *, code: str, message: str, now: datetime, status: str) -> bool:
    """End one run FAILED; fenced on the status (and attempt) it was read with."""
    attempt = run.attempt
    run.mark_failed(error_code=code, error_message=message, now=now)
    metrics = {**(run.metrics or {}), "error": {"code": code, "message": message}}
    written = AgentRun.objects.filter(pk=run.pk, status=status, attempt=attempt).update(
        status=RunStatus.FAILED,
        error_code=code,
        error_message=message,
        completed_at=now,
        duration_ms=run.duration_ms,
        lease_expires_at=None,
        metrics=metrics,
        updated_at=now,
    )
    if written:
        bus.publish(
            EventType.RUN_FAILED,
            {"code": code, "message": message, "attempt": attempt, "node": run.node_id},
            organization=run.organization,
            agent=run.agent,
            run=run,
            node=run.node_id,
        )
    return written == 1


def _move_running(
    rows: list[AgentRun], *, target: RequeueTarget, now: datetime, reason: str
) -> MoveCounts:
    """RUNNING -> PENDING on the target (attempts left) or FAILED NODE_LOST; rows are locked."""
    max_attempts = int(_fleet_settings()["max_attempts"])
    counts = MoveCounts()
    by_attempt: dict[int, list[AgentRun]] = defaultdict(list)
    for run in rows:
        if run.attempt >= max_attempts:
            message = (
                f"Its node {run.node_id or '?'} was lost ({reason}) on attempt {run.attempt}"
                f" of {max_attempts}."
            )
            if _fail_lost(run, code=NODE_LOST, message=message, now=now, status=RunStatus.RUNNING):
                counts.failed.append(str(run.pk))
        else:
            by_attempt[run.attempt].append(run)
    requeued: list[tuple[str, object]] = []
    for attempt, group in by_attempt.items():
        ids = [run.pk for run in group]
        # The fence: only the attempt we read goes back to PENDING. The next claim makes
        # it attempt + 1, so the lost owner's finish (fenced on its attempt) writes nothing.
        AgentRun.objects.filter(pk__in=ids, status=RunStatus.RUNNING, attempt=attempt).update(
            status=RunStatus.PENDING,
            node_id=target.node_id,
            queued_at=now,
            lease_expires_at=None,
            updated_at=now,
        )
        requeued.extend((run.pk, run.agent_id) for run in group)
    # The rows are locked by this transaction, so every UPDATE above matched its rows.
    counts.requeued.extend(str(run_id) for run_id, _ in requeued)
    runs_dispatch(runs=requeued, queue=target.queue)
    return counts


def _running_batches(queryset, *, now: datetime, reason: str, target_for) -> MoveCounts:
    """Drain a queryset of RUNNING runs batch by batch; target_for(run) -> RequeueTarget."""
    total = MoveCounts()
    seen: set = set()
    while True:
        with transaction.atomic():
            # Locks the batch against a second reaper and against run_finish; rows already
            # locked by a finishing worker are skipped: that worker is writing the outcome.
            rows = list(
                queryset.select_for_update(skip_locked=True, of=("self",))
                .exclude(pk__in=seen)
                .select_related("organization", "agent")
                .order_by()[:BATCH_SIZE]
            )
            if not rows:
                break
            seen.update(run.pk for run in rows)
            groups: dict[str, list[AgentRun]] = defaultdict(list)
            targets: dict[str, RequeueTarget] = {}
            for run in rows:
                key = run.node_id
                if key not in targets:
                    targets[key] = target_for(run)
                groups[key].append(run)
            for key, group in groups.items():
                total.merge(_move_running(group, target=targets[key], now=now, reason=reason))
        if len(rows) < BATCH_SIZE:
            break
    return total


def _pending_moved(node_id: str, *, target: RequeueTarget, now: datetime) -> list[str]:
    """Re-enqueue the PENDING runs routed to a lost node on the target's queue."""
    moved: list[str] = []
    seen: set = set()
    while True:
        with transaction.atomic():
            # A worker claiming one of these right now blocks on our lock, then claims it
            # (status and attempt are unchanged): the extra message is then a no-op.
            rows = list(
                AgentRun.objects.select_for_update(skip_locked=True)
                .filter(node_id=node_id, status=RunStatus.PENDING)
                .exclude(pk__in=seen)
                .only("id", "agent_id", "attempt")
                .order_by()[:BATCH_SIZE]
            )
            if not rows:
                break
            ids = [run.pk for run in rows]
            seen.update(ids)
            AgentRun.objects.filter(pk__in=ids, status=RunStatus.PENDING).update(
                node_id=target.node_id, queued_at=now, updated_at=now
            )
            runs_dispatch(runs=[(run.pk, run.agent_id) for run in rows], queue=target.queue)
            moved.extend(str(run_id) for run_id in ids)
        if len(rows) < BATCH_SIZE:
            break
    return moved


def _requeued_event(run_ids: list[str], *, reason: str, node: str, target: str) -> None:
    if run_ids:
        bus.publish(
            EventType.RUN_REQUEUED,
            {
                "reason": reason,
                "count": len(run_ids),
                "runs": run_ids[:EVENT_ID_LIMIT],
                "target": target or None,
            },
            node=node,
        )


# --- failover --------------------------------------------------------------------------


@dataclass(frozen=True)
class FailoverResult:
    node_id: str
    backup_node: str | None
    reassigned_runs: int
    failed_runs: int
    message: str
    queue: str = ""
    run_ids: list[str] = field(default_factory=list)


def _mark_failed(node: OrchestratorNode, *, now: datetime, reason: str, **extra) -> bool:
    if node.status == NodeStatus.FAILED:
        return False
    # Conditional on the status read: a concurrent sweep or failover marks it only once.
    changed = OrchestratorNode.objects.filter(pk=node.pk, status=node.status).update(
        status=NodeStatus.FAILED, updated_at=now
    )
    if changed:
        node_status_event(node.node_id, node.status, NodeStatus.FAILED, reason, **extra)
        node.status = NodeStatus.FAILED
    return bool(changed)


def node_failover(
    *, node_id: str, now: datetime | None = None, reason: str = "failover requested"
) -> FailoverResult:
    """Mark the node FAILED and move its PENDING and RUNNING runs to a backup node."""
    now = now or timezone.now()
    node = OrchestratorNode.objects.filter(node_id=node_id).first()
    if node is None:
        raise NodeNotFound(node_id)
    _mark_failed(node, now=now, reason=reason)
    backup = backup_node_pick(exclude=node_id, region=node.region, now=now)
    target = _target_for(backup)

    running = _running_batches(
        AgentRun.objects.filter(node_id=node_id, status=RunStatus.RUNNING),
        now=now,
        reason=f"node {node_id} failed over",
        target_for=lambda run: target,
    )
    pending = _pending_moved(node_id, target=target, now=now)
    reassigned = running.requeued + pending
    if backup is not None:
        message = (
            f"Failed over {node_id}: {len(reassigned)} run(s) reassigned to node"
            f" {backup.node_id} (queue {target.queue})"
        )
    else:
        message = (
            f"Failed over {node_id}: no healthy backup node; {len(reassigned)} run(s)"
            f" re-queued on the default queue ({target.queue})"
        )
    if running.failed:
        message += f", {len(running.failed)} failed {NODE_LOST} (attempts used up)"
    message += "."
    bus.publish(
        EventType.NODE_FAILOVER,
        {
            "node": node_id,
            "backupNode": backup.node_id if backup else None,
            "queue": target.queue,
            "reassignedRuns": len(reassigned),
            "failedRuns": len(running.failed),
            "runs": reassigned[:EVENT_ID_LIMIT],
            "failed": running.failed[:EVENT_ID_LIMIT],
            "reason": reason,
        },
        node=node_id,
    )
    _requeued_event(
        reassigned, reason=f"node {node_id} failed over", node=node_id, target=target.node_id
    )
    logger.warning(message)
    return FailoverResult(
        node_id=node_id,
        backup_node=backup.node_id if backup else None,
        reassigned_runs=len(reassigned),
        failed_runs=len(running.failed),
        message=message,
        queue=target.queue,
        run_ids=reassigned,
    )


# --- the expiry sweep --------------------------------------------------------------------


@dataclass
class SweepResult:
    unhealthy: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    failovers: list[FailoverResult] = field(default_factory=list)


def node_sweep(*, now: datetime | None = None) -> SweepResult:
    """ACTIVE / DRAINING -> UNHEALTHY -> FAILED by heartbeat age; FAILED nodes fail over.

    Thresholds are multiples of the heartbeat interval from the live configuration:
    UNHEALTHY after unhealthy_after_intervals, FAILED after failed_after_intervals.
    """
    now = now or timezone.now()
    fleet = _fleet_settings()
    interval = float(fleet["heartbeat_interval_s"])
    unhealthy_before = now - timedelta(seconds=interval * float(fleet["unhealthy_after_intervals"]))
    failed_before = now - timedelta(seconds=interval * float(fleet["failed_after_intervals"]))
    result = SweepResult()
    # node_status_heartbeat_idx: the few nodes that are late.
    late = OrchestratorNode.objects.filter(
        status__in=SWEPT_NODE_STATES, last_heartbeat_at__lt=unhealthy_before
    ).order_by("node_id")
    for node in late:
        age_s = round((now - node.last_heartbeat_at).total_seconds(), 3)
        to_failed = node.last_heartbeat_at < failed_before
        target = NodeStatus.FAILED if to_failed else NodeStatus.UNHEALTHY
        if target == node.status:
            continue
        # Conditional on the status and the heartbeat we read: a heartbeat landing in
        # between moves last_heartbeat_at, and then the node is left alone.
        changed = OrchestratorNode.objects.filter(
            pk=node.pk, status=node.status, last_heartbeat_at=node.last_heartbeat_at
        ).update(status=target, updated_at=now)
        if not changed:
            continue
        node_status_event(
            node.node_id,
            node.status,
            target,
            "heartbeat expired",
            lastHeartbeatAt=node.last_heartbeat_at.isoformat(),
            heartbeatAgeS=age_s,
        )
        if to_failed:
            result.failed.append(node.node_id)
            result.failovers.append(
                node_failover(node_id=node.node_id, now=now, reason="heartbeat expired")
            )
        else:
            result.unhealthy.append(node.node_id)
    return result


# --- the reaper ------------------------------------------------------------------------


@dataclass
class ReapResult:
    requeued_running: list[str] = field(default_factory=list)
    failed_running: list[str] = field(default_factory=list)
    requeued_pending: list[str] = field(default_factory=list)
    failed_pending: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(
            len(ids)
            for ids in (
                self.requeued_running,
                self.failed_running,
                self.requeued_pending,
                self.failed_pending,
            )
        )


def _reap_expired_leases(*, now: datetime, result: ReapResult) -> None:
    lease_s = float(_fleet_settings()["lease_s"])
    # run_running_lease_idx. A RUNNING row without a lease (e.g. migrated from the legacy
    # job table) counts as expired once it has not changed for a whole lease.
    expired = AgentRun.objects.filter(status=RunStatus.RUNNING).filter(
        models.Q(lease_expires_at__lt=now)
        | models.Q(lease_expires_at__isnull=True, updated_at__lt=now - timedelta(seconds=lease_s))
    )
    backups: dict[str, RequeueTarget] = {}
    regions = dict(OrchestratorNode.objects.values_list("node_id", "region"))

    def target_for(run: AgentRun) -> RequeueTarget:
        if run.node_id not in backups:
            backup = backup_node_pick(exclude=run.node_id, region=regions.get(run.node_id), now=now)
            backups[run.node_id] = _target_for(backup)
        return backups[run.node_id]

    moved = _running_batches(expired, now=now, reason="lease expired", target_for=target_for)
    result.requeued_running.extend(moved.requeued)
    result.failed_running.extend(moved.failed)
    _requeued_event(moved.requeued, reason="lease expired", node="", target="")


def _reap_stale_pending(*, now: datetime, result: ReapResult) -> None:
    fleet = _fleet_settings()
    cutoff = now - timedelta(seconds=float(fleet["pending_timeout_s"]))
    max_requeues = int(fleet["max_attempts"])
    # run_pending_queued_idx. A PENDING row without queued_at predates the column.
    stale = AgentRun.objects.filter(status=RunStatus.PENDING).filter(
        models.Q(queued_at__lt=cutoff) | models.Q(queued_at__isnull=True, created_at__lt=cutoff)
    )
    seen: set = set()
    requeued: list[tuple[str, object]] = []
    while True:
        with transaction.atomic():
            # Locks the batch against a second reaper (which would enqueue it twice and
            # count two re-queues). A worker claiming a locked run waits for us, then
            # claims it: re-queuing touches neither status nor attempt.
            rows = list(
                stale.select_for_update(skip_locked=True, of=("self",))
                .exclude(pk__in=seen)
                .select_related("organization", "agent")
                .order_by()[:BATCH_SIZE]
            )
            if not rows:
                break
            seen.update(run.pk for run in rows)
            batch: list[tuple[str, object]] = []
            changed: list[AgentRun] = []
            for run in rows:
                count = int((run.meta or {}).get(REQUEUE_COUNT_KEY, 0))
                if count >= max_requeues:
                    message = (
                        f"Nobody picked the run up in {count + 1} waits of"
                        f" {fleet['pending_timeout_s']} s."
                    )
                    if _fail_lost(
                        run,
                        code=PENDING_TIMEOUT,
                        message=message,
                        now=now,
                        status=RunStatus.PENDING,
                    ):
                        result.failed_pending.append(str(run.pk))
                    continue
                run.meta = {**(run.meta or {}), REQUEUE_COUNT_KEY: count + 1}
                run.queued_at = now
                run.updated_at = now
                changed.append(run)
                batch.append((run.pk, run.agent_id))
            if changed:
                AgentRun.objects.bulk_update(changed, ["meta", "queued_at", "updated_at"])
                # The default queue: every worker consumes it, and the run's own target
                # may be the very reason nobody took it.
                runs_dispatch(runs=batch, queue=default_queue())
                requeued.extend(batch)
        if len(rows) < BATCH_SIZE:
            break
    result.requeued_pending.extend(str(run_id) for run_id, _ in requeued)
    _requeued_event(result.requeued_pending, reason="pending timeout", node="", target="")


def runs_reap(*, now: datetime | None = None) -> ReapResult:
    """Re-queue (or end) runs whose node is gone and runs nobody picked up."""
    now = now or timezone.now()
    result = ReapResult()
    _reap_expired_leases(now=now, result=result)
    _reap_stale_pending(now=now, result=result)
    return result
