"""Handing a PENDING run to the Celery workers."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerUnavailable

from orchestration import sending
from orchestration.services.config import agent_policy_live, config_current
from orchestration.services.resolution import (
    agent_effective_config,
)
from orchestration.services.routing import (
    PRIORITY_NORMAL,
    RouteDecision,
    nodes_from_rows,
    nodes_routable_query,
    route_select,
)
from runs import services as run_services
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


# Whether this process's last new async run went to a node's own queue (a fleet of nodes
# consuming their queues): a hint for run_create_routed, never a decision.
_node_bound_last = False


def run_create_routed(**create) -> tuple[AgentRun, RouteDecision]:
    """Insert a new async run (run_services.run_create's arguments) and route it (run_route):
    (the run, where it goes), for run_enqueue(run, decision=...) to send.

    A run bound to a node's own queue names that node on its row. Where this process's
    last async run went to a node queue, the run is routed first and inserted naming its
    node: two statements, one write. Otherwise (no node takes queued work, or not on
    PostgreSQL) the routable nodes are read in the INSERT's own statement: one statement,
    and when a node's queue does turn out to take the run, run_enqueue names the node with
    one more. The same nodes and loads are read either way, so the decision is the same.
    """
    global _node_bound_last
    agent = create["agent"]
    if _node_bound_last or connection.vendor != "postgresql":
        decision = run_route(agent)
        if decision.node_bound:
            create["node_id"] = decision.target_node.node_id
        run = run_services.run_create(**create)
    else:
        query = nodes_routable_query(now=timezone.now(), document=config_current())
        run, rows = run_services.run_create_reading(query, **create)
        decision = run_route(agent, nodes=nodes_from_rows(rows))
    _node_bound_last = decision.node_bound
    return run, decision


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
