"""Handing a PENDING run to the Celery workers."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from kombu.exceptions import OperationalError as BrokerUnavailable

from orchestration import sending
from orchestration.services.config import agent_policy_live
from orchestration.services.resolution import (
    agent_effective_config,
)
from orchestration.services.routing import PRIORITY_NORMAL, RouteDecision, route_select
from runs.choices import RunStatus
from runs.models import AgentRun

logger = logging.getLogger(__name__)


def run_route(agent, *, priority: str = PRIORITY_NORMAL, nodes=None) -> RouteDecision:
    """Where a new async run of ``agent`` goes: routing.route_select, capability = the
    agent's handler key. ``nodes``: the routable nodes, when the caller read them with the
    run's INSERT (orchestrate on PostgreSQL)."""
    return route_select(
        source_region=settings.ORCHESTRATOR_REGION,
        priority=priority,
        capability=agent.handler or None,
        estimate_latency=False,
        require_queue=True,
        nodes=nodes,
    )


def run_enqueue(
    run: AgentRun,
    *,
    total_timeout_s: float | None = None,
    priority: str = PRIORITY_NORMAL,
    decision: RouteDecision | None = None,
) -> None:
    """Dispatch after the PENDING row is committed, never before (the worker must find it).

    The run is routed like any request (run_route, unless the caller already did and
    passes ``decision``). When it goes to a node's own queue the run names that node, so a
    failover of the node finds its PENDING runs; otherwise it waits on the region or
    default queue and belongs to whichever worker claims it.

    The Celery soft time limit is a backstop behind the run's own deadline, so a handler
    stuck in C code cannot hold a worker process forever.
    """
    if total_timeout_s is None:
        total_timeout_s = agent_policy_live(agent_effective_config(run.agent)).total_timeout_s
    if decision is None:
        decision = run_route(run.agent, priority=priority)
    if decision.node_bound and run.node_id != decision.target_node.node_id:
        node_id = decision.target_node.node_id
        # Not sent yet (the message goes below), so no worker can have claimed the row.
        AgentRun.objects.filter(pk=run.pk, status=RunStatus.PENDING).update(node_id=node_id)
        run.node_id = node_id
    run_id = str(run.pk)
    options = {
        "queue": decision.queue,
        "soft_time_limit": total_timeout_s + 10,
        "time_limit": total_timeout_s + 30,
    }

    def send() -> None:
        # The PENDING row is committed, so the run is accepted: the reaper re-enqueues
        # PENDING runs nobody picked up (nodes.pending_timeout_s). A send that fails delays
        # the run; answering 500 would make the caller submit it twice.
        try:
            sending.execute_run_send(run_id, **options)
        except BrokerUnavailable as exc:
            logger.warning(
                "run %s not enqueued, the reaper will: broker unavailable (%s)", run_id, exc
            )
        except Exception:  # the broker refused the message (a Redis out of memory, ...)
            logger.exception("run %s not enqueued, the reaper will: the send failed", run_id)

    # Outside a transaction (orchestrate's single INSERT) the row is committed already
    # and on_commit sends at once.
    transaction.on_commit(send)
