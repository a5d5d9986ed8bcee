"""GET /api/orchestration/health: real checks, each timed and explained.

overall is "unhealthy" when the database cannot answer (nothing works without it),
"degraded" when something the fleet leans on is missing or sick -- Redis, the broker,
the shared policy store, nodes that stopped heartbeating, runs stuck past their lease,
PENDING runs nobody picked up, open circuits -- and "healthy" otherwise.

No check may raise: a failure is the check's answer. When the database is down the
checks that read it are skipped rather than each waiting for the same timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connections
from django.db.models import Count, Q
from django.utils import timezone

from agents.choices import AgentStatus
from agents.models import Agent
from orchestration.choices import EventType, NodeStatus
from orchestration.models import OrchestratorEvent, OrchestratorNode
from orchestration.policies import CircuitState, policy_store
from orchestration.services.config import config_current
from orchestration.services.routing import node_fresh_since
from runs.choices import RunStatus
from runs.models import AgentRun

logger = logging.getLogger(__name__)

UP = "up"
DOWN = "down"
DEGRADED = "degraded"
EMBEDDED = "embedded"  # not configured: the in-process stand-in is in use, by design
SKIPPED = "skipped"

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"

PROBE_TIMEOUT_S = 1.0
NODE_LIST_LIMIT = 200
# Circuits are checked for agents that opened one recently (newest circuit.opened events).
CIRCUIT_EVENT_LIMIT = 500
OPEN_CIRCUIT_STATES = frozenset({CircuitState.OPEN, CircuitState.FORCED_OPEN})
# Nodes that are supposed to heartbeat; FAILED nodes were failed over, OFFLINE ones left.
HEARTBEATING_STATES = (NodeStatus.ACTIVE, NodeStatus.DRAINING, NodeStatus.UNHEALTHY)


def _database_connection():
    """The connection the database check probes (tests swap in an unreachable one)."""
    return connections["default"]


def _timed(probe: Callable[[], dict]) -> dict:
    started = time.perf_counter()
    try:
        result = probe()
    except Exception as exc:  # a check reports its failure; it never raises
        logger.warning("health check failed: %s", exc)
        result = {"status": DOWN, "detail": f"{type(exc).__name__}: {exc}".strip()}
    result["latencyMs"] = round((time.perf_counter() - started) * 1000, 2)
    return result


def check_database() -> dict:
    def probe() -> dict:
        with _database_connection().cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return {"status": UP, "detail": f"SELECT 1 on {connections['default'].vendor}"}

    return _timed(probe)


def check_redis() -> dict:
    url = settings.REDIS_URL

    def probe() -> dict:
        if not url:
            return {"status": EMBEDDED, "detail": "REDIS_URL not set: in-process cache and state"}
        import redis

        # A throwaway client with short timeouts: the probe must answer within a second and
        # must not reuse a pooled connection that hides a server that just went away.
        client = redis.Redis.from_url(
            url, socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S
        )
        try:
            client.ping()
        finally:
            client.close()
        return {"status": UP, "detail": "PING answered"}

    return _timed(probe)


def check_broker() -> dict:
    url = settings.CELERY_BROKER_URL or "memory://"

    def probe() -> dict:
        if url.startswith("memory://"):
            return {"status": EMBEDDED, "detail": "no broker: tasks run in the calling process"}
        from kombu import Connection

        connection = Connection(
            url,
            connect_timeout=PROBE_TIMEOUT_S,
            transport_options={
                "socket_connect_timeout": PROBE_TIMEOUT_S,
                "socket_timeout": PROBE_TIMEOUT_S,
            },
        )
        try:
            connection.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0, timeout=PROBE_TIMEOUT_S
            )
            transport = connection.transport_cls
        finally:
            connection.release()
        return {"status": UP, "detail": f"connected ({transport})"}

    return _timed(probe)


def check_policy_store(*, live_nodes: int | None) -> dict:
    """The shared store must be reachable; process-local state is fine for one node only."""

    def probe() -> dict:
        store = policy_store()
        backend = getattr(store, "backend", type(store).__name__)
        shared = bool(getattr(store, "shared", backend != "local"))
        healthy = getattr(store, "healthy", True)
        if callable(healthy):
            healthy = healthy()
        result = {"backend": backend, "shared": shared}
        if not healthy:
            error = getattr(store, "last_error", None) or "unreachable"
            mode = getattr(store, "fail_mode", "")
            failing = f"; decisions fail {mode}" if mode else ""
            return {**result, "status": DEGRADED, "detail": f"{error}{failing}"}
        if not shared and live_nodes is not None and live_nodes > 1:
            return {
                **result,
                "status": DEGRADED,
                "detail": (
                    f"single-process policy state, but {live_nodes} nodes are live: rate"
                    " limits and circuits are counted per process"
                ),
            }
        if not shared:
            return {**result, "status": UP, "detail": "process-local (single-process only)"}
        return {**result, "status": UP, "detail": f"{backend}, shared by every process"}

    return _timed(probe)


def node_wire(node: OrchestratorNode, *, fresh_since: datetime, now: datetime) -> dict:
    return {
        "id": node.node_id,
        "region": node.region,
        "status": node.status,
        "fresh": node.last_heartbeat_at >= fresh_since,
        "heartbeatAgeS": round(max(0.0, (now - node.last_heartbeat_at).total_seconds()), 1),
        "activeRuns": node.active_runs,
        "capacity": node.capacity,
        "cpuUtilization": node.cpu_utilization,
        "memoryUtilization": node.memory_utilization,
    }


def check_nodes(*, now: datetime) -> tuple[dict, list[dict]]:
    """Counts by freshness (one aggregate) and the node list (one bounded read)."""
    nodes: list[dict] = []

    def probe() -> dict:
        fresh_since = node_fresh_since(now=now)
        counts = OrchestratorNode.objects.aggregate(
            total=Count("id"),
            fresh=Count(
                "id",
                filter=Q(status=NodeStatus.ACTIVE, last_heartbeat_at__gte=fresh_since),
            ),
            stale=Count(
                "id",
                filter=Q(status__in=HEARTBEATING_STATES, last_heartbeat_at__lt=fresh_since),
            ),
            failed=Count("id", filter=Q(status=NodeStatus.FAILED)),
            draining=Count("id", filter=Q(status=NodeStatus.DRAINING)),
        )
        listed = (
            OrchestratorNode.objects.exclude(status=NodeStatus.OFFLINE)
            .only(
                "node_id",
                "region",
                "status",
                "last_heartbeat_at",
                "active_runs",
                "capacity",
                "cpu_utilization",
                "memory_utilization",
            )
            .order_by("node_id")[:NODE_LIST_LIMIT]
        )
        nodes.extend(node_wire(n, fresh_since=fresh_since, now=now) for n in listed)
        figures = {
            "fresh": counts["fresh"],
            "stale": counts["stale"],
            "failed": counts["failed"],
            "draining": counts["draining"],
            "registered": counts["total"],
        }
        if counts["stale"]:
            return {
                **figures,
                "status": DEGRADED,
                "detail": f"{counts['stale']} node(s) stopped heartbeating",
            }
        if not counts["total"]:
            return {**figures, "status": UP, "detail": "no node registered: the default queue"}
        return {**figures, "status": UP, "detail": f"{counts['fresh']} node(s) heartbeating"}

    return _timed(probe), nodes


def check_runs(*, now: datetime) -> dict:
    """Runs stuck past their lease, and PENDING runs older than the pending timeout.

    One aggregate over run_active_status_idx (the partial index of non-terminal runs).
    """

    def probe() -> dict:
        pending_timeout_s = float(config_current()["nodes"]["pending_timeout_s"])
        overdue_before = now - timedelta(seconds=pending_timeout_s)
        row = AgentRun.objects.filter(status__in=[RunStatus.PENDING, RunStatus.RUNNING]).aggregate(
            running=Count("id", filter=Q(status=RunStatus.RUNNING)),
            pending=Count("id", filter=Q(status=RunStatus.PENDING)),
            stuck=Count("id", filter=Q(status=RunStatus.RUNNING, lease_expires_at__lt=now)),
            overdue=Count("id", filter=Q(status=RunStatus.PENDING, queued_at__lt=overdue_before)),
        )
        figures = {
            "running": row["running"],
            "pending": row["pending"],
            "stuckPastLease": row["stuck"],
            "pendingOverdue": row["overdue"],
        }
        problems = []
        if row["stuck"]:
            problems.append(f"{row['stuck']} RUNNING run(s) past their lease")
        if row["overdue"]:
            problems.append(
                f"{row['overdue']} PENDING run(s) waiting longer than {pending_timeout_s:g} s"
            )
        if problems:
            return {**figures, "status": DEGRADED, "detail": "; ".join(problems)}
        return {
            **figures,
            "status": UP,
            "detail": f"{row['running']} running, {row['pending']} pending",
        }

    return _timed(probe)


def check_circuits() -> dict:
    """ACTIVE agents whose circuit is open, asked of the policy store.

    Only agents that published circuit.opened recently are asked (the newest
    CIRCUIT_EVENT_LIMIT events, event_type_id_idx): a circuit cannot be open without one,
    and asking the store about every agent of every organization would not scale.
    """

    def probe() -> dict:
        agent_ids = set(
            OrchestratorEvent.objects.filter(type=EventType.CIRCUIT_OPENED, agent__isnull=False)
            .order_by("-id")
            .values_list("agent_id", flat=True)[:CIRCUIT_EVENT_LIMIT]
        )
        agents = list(
            Agent.objects.filter(pk__in=agent_ids, status=AgentStatus.ACTIVE).only("id", "name")
        )
        store = policy_store()
        open_agents, half_open = [], 0
        for agent in agents:
            state = store.circuit_snapshot(agent_key=str(agent.pk)).state
            if state in OPEN_CIRCUIT_STATES:
                open_agents.append(agent.name)
            elif state == CircuitState.HALF_OPEN:
                half_open += 1
        figures = {"open": len(open_agents), "halfOpen": half_open, "checked": len(agents)}
        if open_agents:
            names = ", ".join(sorted(open_agents)[:10])
            return {**figures, "status": DEGRADED, "detail": f"open circuit(s): {names}"}
        return {**figures, "status": UP, "detail": "no open circuit"}

    return _timed(probe)


def _skipped(reason: str) -> dict:
    return {"status": SKIPPED, "detail": reason, "latencyMs": 0.0}


def health_report(*, now: datetime | None = None) -> dict:
    """The health document: overall, checks, nodes and a few headline figures."""
    now = now or timezone.now()
    checks: dict[str, dict] = {"database": check_database()}
    database_up = checks["database"]["status"] == UP
    checks["redis"] = check_redis()
    checks["broker"] = check_broker()

    nodes: list[dict] = []
    if database_up:
        checks["nodes"], nodes = check_nodes(now=now)
        checks["policyStore"] = check_policy_store(live_nodes=checks["nodes"].get("fresh"))
        checks["runs"] = check_runs(now=now)
        checks["circuits"] = check_circuits()
    else:
        unreachable = "database unreachable"
        checks["nodes"] = _skipped(unreachable)
        checks["policyStore"] = check_policy_store(live_nodes=None)
        checks["runs"] = _skipped(unreachable)
        checks["circuits"] = _skipped(unreachable)

    if not database_up:
        overall = UNHEALTHY
    elif any(check["status"] in (DOWN, DEGRADED) for check in checks.values()):
        overall = DEGRADED
    else:
        overall = HEALTHY

    runs = checks["runs"]
    node_check = checks["nodes"]
    metrics = {
        "freshNodes": node_check.get("fresh"),
        "staleNodes": node_check.get("stale"),
        "runningRuns": runs.get("running"),
        "pendingRuns": runs.get("pending"),
        "stuckRuns": runs.get("stuckPastLease"),
        "openCircuits": checks["circuits"].get("open"),
        "checksMs": round(sum(check.get("latencyMs", 0.0) for check in checks.values()), 2),
    }
    return {
        "overall": overall,
        "nodes": nodes,
        "metrics": metrics,
        "checks": checks,
        "checkedAt": now.isoformat(),
    }
