"""Which node (and which Celery queue) takes a piece of work.

A node is a candidate when it is ACTIVE, its last heartbeat is fresh (younger than
``unhealthy_after_intervals`` heartbeat intervals, so a node the expiry sweep has not
marked yet is still skipped) and, when a capability is asked for, it lists it. Nodes of
the caller's region come first; another region is a fallback, and the reason says so.
Among candidates the one with the most headroom wins, ties going to the lowest node id
so the choice is deterministic. Headroom is capacity minus load, and load is the larger
of what the node's last heartbeat reported and the PENDING/RUNNING runs that name it
(routed to it since), so a burst between two heartbeats spreads over the fleet; those are
counted up to the node's capacity, as a node holding that many has no headroom anyway.

Priority: a share of every node's capacity (``routing.reserved_high_priority_share``)
is kept for high-priority work, so a burst of normal work cannot starve it.

A node is handed work on its own queue only when it says it consumes that queue
(``metadata["queues"]``): a node whose worker does not listen there would leave the
run PENDING until the reaper noticed. Otherwise the run goes to the node's region
queue (if advertised) or to the default queue, which every worker consumes.
"""

from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connection
from django.db.models import Count
from django.utils import timezone

from orchestration.choices import ROUTABLE_NODE_STATES
from orchestration.models import OrchestratorNode
from orchestration.queues import default_queue, node_queue, region_queue
from orchestration.services.config import config_current
from runs.choices import ACTIVE_RUN_STATES, RunStatus
from runs.models import AgentRun
from runs.sql import model_columns, prepared_cursor, row_instance

PRIORITY_LOW = "low"
PRIORITY_NORMAL = "normal"
PRIORITY_HIGH = "high"
PRIORITY_NAMES = (PRIORITY_LOW, PRIORITY_NORMAL, PRIORITY_HIGH)
# Numeric priorities run 0..10; from this value up a request may use reserved capacity.
HIGH_PRIORITY_THRESHOLD = 7
MAX_NUMERIC_PRIORITY = 10

# The latency estimate: the median duration of the node's runs finished recently.
LATENCY_WINDOW = timedelta(minutes=15)
LATENCY_SAMPLE_LIMIT = 500  # bounds the read on a busy node: the newest runs suffice
DEFAULT_LATENCY_MS = 1000.0  # no recent run to go by (a new node, or no node at all)

# A node that lists this capability runs anything (e.g. a generic worker).
ANY_CAPABILITY = "*"


class InvalidPriority(ValueError):
    pass


def priority_class(priority: str | int | float | None) -> str:
    """ "low" / "normal" / "high", from a name or a number 0..10 (>= 7 is high)."""
    if priority is None or priority == "":
        return PRIORITY_NORMAL
    if isinstance(priority, bool):
        raise InvalidPriority("priority is a name or a number, not a boolean")
    if isinstance(priority, str):
        name = priority.strip().lower()
        if name in PRIORITY_NAMES:
            return name
        try:
            priority = int(name)
        except ValueError:
            raise InvalidPriority(
                f"priority must be one of {', '.join(PRIORITY_NAMES)} or 0..10, not {priority!r}"
            ) from None
    if isinstance(priority, float):
        if not priority.is_integer():
            raise InvalidPriority("a numeric priority is a whole number 0..10")
        priority = int(priority)
    if not isinstance(priority, int) or not 0 <= priority <= MAX_NUMERIC_PRIORITY:
        raise InvalidPriority("a numeric priority is a whole number 0..10")
    if priority >= HIGH_PRIORITY_THRESHOLD:
        return PRIORITY_HIGH
    return PRIORITY_LOW if priority <= 2 else PRIORITY_NORMAL


def node_fresh_since(*, now: datetime | None = None, document: dict | None = None) -> datetime:
    """Heartbeats at or after this instant are fresh; older ones mean the node may be gone."""
    now = now or timezone.now()
    nodes = (document or config_current())["nodes"]
    return now - timedelta(
        seconds=float(nodes["heartbeat_interval_s"]) * float(nodes["unhealthy_after_intervals"])
    )


def nodes_routable(*, now: datetime | None = None, document: dict | None = None):
    """ACTIVE nodes with a fresh heartbeat (served by node_status_heartbeat_idx)."""
    return OrchestratorNode.objects.filter(
        status__in=ROUTABLE_NODE_STATES,
        last_heartbeat_at__gte=node_fresh_since(now=now, document=document),
    )


@functools.cache
def _routable_sql() -> str:
    table = OrchestratorNode._meta.db_table
    runs = AgentRun._meta.db_table
    states = ", ".join(["%s"] * len(ROUTABLE_NODE_STATES))
    # The run states that load a node are written as literals, not parameters: the
    # statement is prepared, and only a condition that is the partial index's own lets
    # its generic plan read run_active_node_idx.
    active = ", ".join(f"'{state.value}'" for state in sorted(ACTIVE_RUN_STATES))
    # Table and column names come from the models; values are parameters.
    return (
        f"SELECT {model_columns(OrchestratorNode)[0]},"  # noqa: S608
        # A node's runs in flight, counted up to its capacity (nodes_in_flight).
        f' (SELECT count(*) FROM (SELECT 1 FROM "{runs}" r'
        f' WHERE r."node_id" = "{table}"."node_id" AND r."status" IN ({active})'
        f' LIMIT "{table}"."capacity") AS counted) AS in_flight'
        f' FROM "{table}"'
        f' WHERE "{table}"."status" IN ({states}) AND "{table}"."last_heartbeat_at" >= %s'
        f' ORDER BY "{table}"."node_id"'
    )


def nodes_routable_list(*, now: datetime, document: dict) -> list[OrchestratorNode]:
    """nodes_routable() ordered by node id, as a list: the query every async submission
    makes, written once instead of compiled by the ORM on every call. On PostgreSQL each
    node comes with its runs in flight (``runs_in_flight``, see nodes_from_rows)."""
    if connection.vendor != "postgresql":
        return list(nodes_routable(now=now, document=document).order_by("node_id"))
    with prepared_cursor() as cursor:
        cursor.execute(*nodes_routable_query(now=now, document=document))
        return nodes_from_rows(cursor.fetchall())


def nodes_routable_query(*, now: datetime, document: dict | None = None) -> tuple[str, list]:
    """PostgreSQL: the SQL and parameters of nodes_routable_list() (its columns in
    model_columns() order, then the node's runs in flight), for a caller that may run it
    within a statement of its own: the async submission can read the nodes in its INSERT's
    statement (run_create_reading)."""
    since = node_fresh_since(now=now, document=document)
    return _routable_sql(), [*ROUTABLE_NODE_STATES, since]


def nodes_from_rows(rows) -> list[OrchestratorNode]:
    """nodes_routable_query()'s rows as nodes, each with ``runs_in_flight``: the PENDING and
    RUNNING runs that name it, counted up to its capacity (route_select needs no more: a
    node with that many is saturated whatever the rest)."""
    nodes = []
    for row in rows:
        node = row_instance(OrchestratorNode, row)
        node.runs_in_flight = int(row[-1])
        nodes.append(node)
    return nodes


def node_has_capability(node: OrchestratorNode, capability: str | None) -> bool:
    if not capability:
        return True
    capabilities = node.capabilities if isinstance(node.capabilities, list) else []
    return capability in capabilities or ANY_CAPABILITY in capabilities


def node_headroom(
    node: OrchestratorNode, *, priority: str, reserved_share: float, load: int | None = None
) -> float:
    """Free slots this priority may use: normal work leaves the reserved share alone."""
    usable = float(node.capacity)
    if priority != PRIORITY_HIGH:
        usable *= 1.0 - reserved_share
    return usable - float(node.active_runs if load is None else load)


def nodes_in_flight(nodes: list[OrchestratorNode]) -> dict[str, int]:
    """PENDING + RUNNING runs that name each node (run_active_node_idx, partial).

    A heartbeat reports a node's load every few seconds; a burst of requests between two
    heartbeats would otherwise all see the same headroom and pile onto one node. Nodes read
    with their count (nodes_from_rows: the routable nodes on PostgreSQL, in the same
    statement, each counted up to its capacity, so a backlog of queued runs costs no more
    than a full node) need no query; others are counted here, with the ORM.
    """
    counted = {n.node_id: n.runs_in_flight for n in nodes if hasattr(n, "runs_in_flight")}
    node_ids = [n.node_id for n in nodes if n.node_id not in counted]
    if not node_ids:
        return counted
    rows = (
        AgentRun.objects.filter(
            node_id__in=node_ids, status__in=[RunStatus.PENDING, RunStatus.RUNNING]
        )
        .order_by()
        .values("node_id")
        .annotate(count=Count("id"))
    )
    return {**counted, **{row["node_id"]: row["count"] for row in rows}}


def node_consumed_queue(node: OrchestratorNode) -> str | None:
    """The most specific queue the node says it consumes (its own, then its region's)."""
    metadata = node.metadata if isinstance(node.metadata, dict) else {}
    advertised = metadata.get("queues") or []
    if not isinstance(advertised, list):
        return None
    for queue in (node_queue(node.node_id), region_queue(node.region)):
        if queue in advertised:
            return queue
    return None


def node_latency_estimate(*, node_id: str, now: datetime | None = None) -> tuple[float, int]:
    """(median duration in ms, samples) of the node's runs finished in the last 15 minutes.

    One query on run_node_completed_idx, newest first, at most LATENCY_SAMPLE_LIMIT rows;
    the median is taken here so SQLite and PostgreSQL answer alike.
    """
    now = now or timezone.now()
    durations = list(
        AgentRun.objects.filter(
            node_id=node_id,
            completed_at__gte=now - LATENCY_WINDOW,
            completed_at__lte=now,
            duration_ms__isnull=False,
        )
        .order_by("-completed_at")
        .values_list("duration_ms", flat=True)[:LATENCY_SAMPLE_LIMIT]
    )
    if not durations:
        return DEFAULT_LATENCY_MS, 0
    return float(statistics.median(durations)), len(durations)


@dataclass(frozen=True)
class RouteDecision:
    target_node: OrchestratorNode | None
    queue: str
    strategy: str
    reason: str
    latency_ms: float
    priority: str = PRIORITY_NORMAL
    headroom: float | None = None
    fallback: bool = False  # the node is outside the caller's region
    latency_samples: int = 0
    considered: list[str] = field(default_factory=list)

    @property
    def region(self) -> str | None:
        return self.target_node.region if self.target_node is not None else None

    @property
    def node_bound(self) -> bool:
        """True when the work goes to the target node's own queue (only it will run it)."""
        return self.target_node is not None and self.queue == node_queue(self.target_node.node_id)


def route_select(
    *,
    source_region: str | None,
    priority: str | int | None = PRIORITY_NORMAL,
    capability: str | None = None,
    now: datetime | None = None,
    estimate_latency: bool = True,
    require_queue: bool = False,
    nodes: list[OrchestratorNode] | None = None,
) -> RouteDecision:
    """Choose a node for one request; no candidate means the default queue.

    require_queue (dispatch of async runs): only nodes that consume their own or their
    region's queue qualify -- an API process or a remote node takes no queued work.
    ``nodes``: the routable nodes (nodes_routable_list()) when the caller read them already.
    Raises InvalidPriority for a priority that is neither a name nor 0..10.
    """
    now = now or timezone.now()
    document = config_current()
    routing = document["routing"]
    strategy = str(routing.get("strategy", "region-affinity"))
    reserved_share = min(max(float(routing.get("reserved_high_priority_share", 0.0)), 0.0), 1.0)
    level = priority_class(priority)

    # The fleet is small (tens of nodes): two indexed queries, the rest is arithmetic.
    live = [
        node
        for node in (
            nodes if nodes is not None else nodes_routable_list(now=now, document=document)
        )
        if node_has_capability(node, capability)
        and (not require_queue or node_consumed_queue(node) is not None)
    ]
    wanted = f" with capability {capability!r}" if capability else ""
    if require_queue:
        wanted += " consuming a node or region queue"
    if not live:
        return RouteDecision(
            target_node=None,
            queue=default_queue(),
            strategy=strategy,
            reason=f"no ACTIVE node with a fresh heartbeat{wanted}; default queue",
            latency_ms=DEFAULT_LATENCY_MS,
            priority=level,
        )

    in_flight = nodes_in_flight(live)

    def with_headroom(nodes):
        scored = [
            (
                node_headroom(
                    n,
                    priority=level,
                    reserved_share=reserved_share,
                    load=max(n.active_runs, in_flight.get(n.node_id, 0)),
                ),
                n,
            )
            for n in nodes
        ]
        return [(room, n) for room, n in scored if room > 0]

    local = [n for n in live if source_region and n.region == source_region]
    candidates = with_headroom(local)
    fallback = False
    if not candidates:
        others = [n for n in live if not (source_region and n.region == source_region)]
        candidates = with_headroom(others)
        fallback = bool(source_region) and bool(candidates)
    if not candidates:
        return RouteDecision(
            target_node=None,
            queue=default_queue(),
            strategy=strategy,
            reason=(
                f"all {len(live)} live node(s){wanted} are saturated for {level} priority;"
                " default queue"
            ),
            latency_ms=DEFAULT_LATENCY_MS,
            priority=level,
            considered=[n.node_id for n in live],
        )

    # Most headroom first; equal headroom goes to the lowest node id (live is sorted).
    best = max(room for room, _ in candidates)
    headroom, target = next((room, n) for room, n in candidates if room == best)

    if fallback:
        why = "is saturated" if local else "has no routable node"
        reason = (
            f"region {source_region!r} {why}{wanted}; fell back to region"
            f" {target.region!r}: node {target.node_id} has the most headroom"
            f" ({headroom:g} for {level} priority)"
        )
    elif source_region:
        reason = (
            f"region-local node {target.node_id} has the most headroom"
            f" ({headroom:g} for {level} priority)"
        )
    else:
        reason = f"node {target.node_id} has the most headroom ({headroom:g} for {level} priority)"

    latency_ms, samples = DEFAULT_LATENCY_MS, 0
    if estimate_latency:
        latency_ms, samples = node_latency_estimate(node_id=target.node_id, now=now)

    queue = node_consumed_queue(target)
    if queue is None:
        queue = default_queue()
        reason += "; it advertises no node or region queue, so the default queue"
    return RouteDecision(
        target_node=target,
        queue=queue,
        strategy=strategy,
        reason=reason,
        latency_ms=latency_ms,
        priority=level,
        headroom=headroom,
        fallback=fallback,
        latency_samples=samples,
        considered=[n.node_id for _, n in candidates],
    )
