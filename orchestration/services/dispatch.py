"""Handing a PENDING run to the Celery workers."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction

from orchestration.services.config import agent_policy_live
from orchestration.services.resolution import (
    agent_effective_config,
)
from orchestration.services.routing import PRIORITY_NORMAL, route_select
from orchestration.tasks import execute_run
from runs.choices import RunStatus
from runs.models import AgentRun


def run_enqueue(
    run: AgentRun, *, total_timeout_s: float | None = None, priority: str = PRIORITY_NORMAL
) -> None:
    """Dispatch after the PENDING row is committed, never before (the worker must find it).

    The run is routed like any request (routing.route_select, capability = the agent's
    handler key). When it goes to a node's own queue the run names that node, so a
    failover of the node finds its PENDING runs; otherwise it waits on the region or
    default queue and belongs to whichever worker claims it.

    The Celery soft time limit is a backstop behind the run's own deadline, so a handler
    stuck in C code cannot hold a worker process forever.
    """
    if total_timeout_s is None:
        total_timeout_s = agent_policy_live(agent_effective_config(run.agent)).total_timeout_s
    decision = route_select(
        source_region=settings.ORCHESTRATOR_REGION,
        priority=priority,
        capability=run.agent.handler or None,
        estimate_latency=False,
        require_queue=True,
    )
    if decision.node_bound:
        node_id = decision.target_node.node_id
        # Still inside the transaction that created the row: no worker can see it yet.
        AgentRun.objects.filter(pk=run.pk, status=RunStatus.PENDING).update(node_id=node_id)
        run.node_id = node_id
    run_id = str(run.pk)
    options = {
        "queue": decision.queue,
        "soft_time_limit": total_timeout_s + 10,
        "time_limit": total_timeout_s + 30,
    }
    transaction.on_commit(lambda: execute_run.apply_async(args=[run_id], **options))
