"""Starting and stopping a node: bootstrap_orchestrator, shutdown_orchestrator and SIGTERM.

Bootstrap (orchestrator_bootstrap) is idempotent: a second run writes nothing and says
so. The pieces that could write are each guarded by a read first:
- demo data: demo_seed only runs when something of it is missing (its membership
  upsert would otherwise touch a row on every run);
- definitions: agent_definitions_sync only creates what is missing;
- agents on the bus: which agents a node has announced is read from the event log --
  the newest agent.registered / agent.unregistered event per (agent, node) -- and only
  the difference is published (new ACTIVE agents announced, agents that stopped being
  ACTIVE unregistered), so a second run publishes no duplicate;
- the node: an ACTIVE row that already says what we would register is left alone,
  heartbeat timestamp included. Anything else is registered afresh (ACTIVE).

Shutdown (node_shutdown) is what every graceful exit runs -- the command, a Celery
worker's worker_shutdown, an API process's SIGTERM or atexit: DRAINING (routing skips
the node), wait up to the grace period for its RUNNING runs, hand whatever is left to
another node through failover (or to the default queue when there is none), unregister
the agents it announced, OFFLINE. No accepted run is lost: a handed-over run is PENDING
and enqueued again; a late finish of the old attempt is fenced out by run_claim's
attempt bump.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TextIO

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Max

from agents.choices import AgentStatus, MemberRole
from agents.demo import (
    DEMO_ADMIN_USERNAME,
    DEMO_API_KEY_NAME,
    DEMO_DATASET_SLUG,
    DEMO_ORGANIZATION_SLUG,
    demo_seed,
)
from agents.handlers import registry
from agents.models import Agent, ApiKey, Dataset, Organization, OrganizationMember
from agents.services import agent_definitions_sync
from orchestration import bus
from orchestration.choices import EventType, NodeStatus
from orchestration.models import OrchestratorEvent, OrchestratorNode
from orchestration.policies import CircuitState, policy_store
from orchestration.services import health
from orchestration.services.nodes import (
    DRAINABLE_NODE_STATES,
    node_drain,
    node_get,
    node_register,
    node_unregister,
)
from orchestration.services.reaper import FailoverResult, node_failover
from orchestration.worker import SHUTDOWN_GRACE_S, node_version
from runs.choices import RunStatus
from runs.models import AgentRun

logger = logging.getLogger(__name__)

# The same grace period as the node runtime's (below the run lease, see there).
DEFAULT_GRACE_S = SHUTDOWN_GRACE_S
POLL_S = 0.2

# Statuses of a node that may still be executing runs, so shutdown waits for them.
WAITING_NODE_STATES = (NodeStatus.ACTIVE, NodeStatus.DRAINING, NodeStatus.UNHEALTHY)
AGENT_EVENT_TYPES = (EventType.AGENT_REGISTERED, EventType.AGENT_UNREGISTERED)
# Circuit states the bootstrap summary calls out.
NOTABLE_CIRCUIT_STATES = (
    CircuitState.OPEN,
    CircuitState.FORCED_OPEN,
    CircuitState.HALF_OPEN,
    CircuitState.FORCED_CLOSED,
    CircuitState.UNKNOWN,
)
NAMES_SHOWN = 8

# Result words of the summary table.
OK, UP, EMBEDDED, DEGRADED = "ok", "up", "embedded", "degraded"
CREATED, CHANGED, UNCHANGED = "created", "changed", "unchanged"


class BootstrapError(Exception):
    """The request cannot be carried out (an unknown organization, no organization chosen)."""


def node_id_default() -> str:
    """The node the commands act on when none is named: ORCHESTRATOR_NODE_ID if configured.

    Unconfigured, every process calls itself <host>-<pid> (settings), so each command run
    would be a new node: the commands then use the host name, the same on every run.
    """
    configured = settings.ORCHESTRATOR_NODE_ID
    if configured == f"{socket.gethostname()}-{os.getpid()}":
        return socket.gethostname()
    return configured


def _names(items: Iterable[str]) -> str:
    items = sorted(items)
    shown = ", ".join(items[:NAMES_SHOWN])
    return shown + (f" and {len(items) - NAMES_SHOWN} more" if len(items) > NAMES_SHOWN else "")


# --- agents on the bus -------------------------------------------------------------------


def agents_registered_on(*, node_id: str) -> set:
    """Ids of the agents whose newest agent.registered/unregistered event from the node
    is a registration: what the node currently announces on the bus.

    Two reads on event_type_id_idx (the agent events are a small share of the log). An
    event removed by retention (prune_events) is forgotten: its agent is announced again
    by the next bootstrap and not unregistered at shutdown.
    """
    newest = (
        OrchestratorEvent.objects.filter(
            type__in=AGENT_EVENT_TYPES, node_id=node_id, agent__isnull=False
        )
        .order_by()
        .values("agent_id")
        .annotate(last=Max("id"))
        .values("last")
    )
    return set(
        OrchestratorEvent.objects.filter(
            pk__in=newest, type=EventType.AGENT_REGISTERED
        ).values_list("agent_id", flat=True)
    )


def agents_unregister(*, node_id: str, agent_ids: Iterable, reason: str) -> list[str]:
    """agent.unregistered for each agent; returns their names."""
    agents = Agent.objects.filter(pk__in=list(agent_ids)).select_related("organization")
    names = []
    for agent in agents.order_by("name"):
        bus.unregister_agent(agent, node=node_id, reason=reason)
        names.append(agent.name)
    return names


# --- bootstrap ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One row of the summary table."""

    name: str
    result: str
    detail: str
    changed: bool = False


@dataclass
class BootstrapResult:
    node_id: str
    steps: list[Step] = field(default_factory=list)
    # demo_seed's answer when it ran (password / api_key set only when just created).
    demo: dict | None = None

    @property
    def database_up(self) -> bool:
        return any(s.name == "database" and s.result in (UP, EMBEDDED) for s in self.steps)

    @property
    def changes(self) -> list[Step]:
        return [step for step in self.steps if step.changed]


def _service_steps() -> list[Step]:
    """Database, Redis and broker through health.py's probes, saying what is embedded."""
    database = health.check_database()
    if database["status"] == health.UP and connection.vendor == "sqlite":
        name = settings.DATABASES["default"].get("NAME")
        database = {**database, "status": EMBEDDED, "detail": f"SQLite ({name}): one machine"}
    broker = health.check_broker()
    if settings.CELERY_TASK_ALWAYS_EAGER and broker["status"] != EMBEDDED:
        broker = {**broker, "detail": f"{broker['detail']}; eager mode: tasks run in-process"}
    return [
        Step(name, check["status"], check["detail"])
        for name, check in (
            ("database", database),
            ("redis", health.check_redis()),
            ("broker", broker),
        )
    ]


def demo_complete() -> bool:
    """Whether everything demo_seed creates already exists (definitions aside: synced later)."""
    organization = Organization.objects.filter(slug=DEMO_ORGANIZATION_SLUG).first()
    if organization is None:
        return False
    User = get_user_model()
    user = User.objects.filter(**{User.USERNAME_FIELD: DEMO_ADMIN_USERNAME}).first()
    return (
        user is not None
        and OrganizationMember.objects.filter(
            organization=organization, user=user, role=MemberRole.OWNER
        ).exists()
        and ApiKey.objects.filter(
            organization=organization, name=DEMO_API_KEY_NAME, revoked_at__isnull=True
        ).exists()
        and Dataset.objects.filter(organization=organization, slug=DEMO_DATASET_SLUG).exists()
    )


def _organizations_pick(
    *, slugs: list[str], all_organizations: bool, demo: bool
) -> list[Organization]:
    if all_organizations:
        return list(Organization.objects.order_by("slug"))
    wanted = list(dict.fromkeys([*slugs, *([DEMO_ORGANIZATION_SLUG] if demo else [])]))
    if not wanted:
        raise BootstrapError("choose the organizations: --org <slug>, --all or --demo")
    found = {o.slug: o for o in Organization.objects.filter(slug__in=wanted)}
    missing = [slug for slug in wanted if slug not in found]
    if missing:
        raise BootstrapError(f"no organization {', '.join(map(repr, missing))}")
    return [found[slug] for slug in wanted]


def _definitions_step(organizations: list[Organization]) -> Step:
    created: dict[str, list[str]] = {}
    for organization in organizations:
        synced = agent_definitions_sync(organization=organization)
        if synced.created:
            created[organization.slug] = synced.created
    declared = len(registry.definitions())
    if not created:
        return Step(
            "definitions",
            UNCHANGED,
            f"all {declared} declared definition(s) present in {len(organizations)}"
            " organization(s)",
        )
    detail = "; ".join(f"{slug}: {_names(names)}" for slug, names in sorted(created.items()))
    return Step("definitions", CREATED, f"created {detail}", changed=True)


def _agents_step(*, organizations: list[Organization], node_id: str) -> tuple[Step, list[Agent]]:
    """Announce the ACTIVE agents this process can run; unregister those that stopped being."""
    agents = list(
        Agent.objects.filter(organization__in=organizations)
        .select_related("organization")
        .order_by("organization__slug", "name")
    )
    active = [a for a in agents if a.status == AgentStatus.ACTIVE]
    servable = [a for a in active if registry.is_registered(a.handler)]
    unservable = [a.name for a in active if not registry.is_registered(a.handler)]
    announced = agents_registered_on(node_id=node_id)
    new = [a for a in servable if a.pk not in announced]
    servable_ids = {a.pk for a in servable}
    stale = [a.pk for a in agents if a.pk in announced and a.pk not in servable_ids]

    for agent in new:
        bus.register_agent(agent, node=node_id)
    gone = agents_unregister(
        node_id=node_id, agent_ids=stale, reason="no longer ACTIVE with a handler here"
    )
    parts = []
    if new:
        parts.append(f"registered {_names(a.name for a in new)}")
    if gone:
        parts.append(f"unregistered {_names(gone)}")
    kept = len(servable) - len(new)
    if kept:
        parts.append(f"{kept} already registered")
    if unservable:
        parts.append(f"no handler here for {_names(unservable)}")
    if not parts:
        parts.append("no ACTIVE agent")
    changed = bool(new or gone)
    return Step("agents", CHANGED if changed else UNCHANGED, "; ".join(parts), changed), active


def _circuits_step(agents: list[Agent]) -> Step:
    """Read each ACTIVE agent's circuit from the policy store; call out the ones not CLOSED."""
    store = policy_store()
    if not store.shared:
        return Step(
            "circuits",
            EMBEDDED,
            "process-local policy store: every circuit starts CLOSED in each process",
        )
    by_state: dict[str, list[str]] = {}
    for agent in agents:
        state = store.circuit_snapshot(agent_key=str(agent.pk)).state
        by_state.setdefault(state, []).append(agent.name)
    if not store.healthy:
        return Step("circuits", DEGRADED, f"{store.backend} unreachable: {store.last_error}")
    notable = [
        f"{state} {_names(by_state[state])}"
        for state in NOTABLE_CIRCUIT_STATES
        if state in by_state
    ]
    closed = len(by_state.get(CircuitState.CLOSED, []))
    detail = f"{store.backend}: {len(agents)} read, {closed} CLOSED"
    return Step("circuits", DEGRADED if notable else UP, "; ".join([detail, *notable]))


def _node_step(*, node_id: str, region: str, role: str) -> Step:
    wanted = {
        "region": region,
        "endpoint": settings.PUBLIC_BASE_URL,
        "capabilities": registry.keys(),
        "capacity": max(0, int(settings.HANDLER_THREADS)),
        # A bootstrap or API node consumes no queue: routing and failover send it nothing.
        "metadata": {"role": role, "queues": []},
        "version": node_version(),
    }
    node = OrchestratorNode.objects.filter(node_id=node_id).first()
    summary = f"{node_id} ACTIVE in {region}, {len(wanted['capabilities'])} capabilities"
    if (
        node is not None
        and node.status == NodeStatus.ACTIVE
        and all(getattr(node, name) == value for name, value in wanted.items())
    ):
        return Step("node", UNCHANGED, summary)
    previous = "new" if node is None else f"was {node.status}"
    node_register(node_id=node_id, **wanted)
    return Step("node", CREATED if node is None else CHANGED, f"{summary} ({previous})", True)


def orchestrator_bootstrap(
    *,
    organization_slugs: Iterable[str] = (),
    all_organizations: bool = False,
    demo: bool = False,
    node_id: str | None = None,
    region: str | None = None,
    role: str = "bootstrap",
    stdout: TextIO | None = None,
) -> BootstrapResult:
    """Check the services, seed, announce the agents, read the circuits, register the node.

    Returns early (database_up False) when the database does not answer. Raises
    BootstrapError for an unknown organization or when none is chosen.
    """
    node_id = node_id or node_id_default()
    region = region or settings.ORCHESTRATOR_REGION
    result = BootstrapResult(node_id=node_id)
    result.steps.extend(_service_steps())
    if not result.database_up:
        return result

    if demo:
        if demo_complete():
            result.steps.append(
                Step("demo", UNCHANGED, "organization, admin, API key and dataset exist")
            )
        else:
            result.demo = demo_seed(stdout=stdout)
            result.steps.append(
                Step("demo", CREATED, "demo organization, admin, API key and dataset", True)
            )
    organizations = _organizations_pick(
        slugs=list(organization_slugs), all_organizations=all_organizations, demo=demo
    )
    result.steps.append(
        Step("organizations", OK, f"{len(organizations)}: {_names(o.slug for o in organizations)}")
    )
    result.steps.append(_definitions_step(organizations))
    agents_step, active = _agents_step(organizations=organizations, node_id=node_id)
    result.steps.append(agents_step)
    result.steps.append(_circuits_step(active))
    result.steps.append(_node_step(node_id=node_id, region=region, role=role))
    return result


# --- shutdown ----------------------------------------------------------------------------


@dataclass
class ShutdownResult:
    node_id: str
    previous_status: str
    # RUNNING when the shutdown began, and which of them ended within the grace period.
    in_flight: int = 0
    finished: int = 0
    waited_s: float = 0.0
    handover: FailoverResult | None = None
    agents_unregistered: list[str] = field(default_factory=list)
    status: str = NodeStatus.OFFLINE

    @property
    def changed(self) -> bool:
        return self.previous_status != NodeStatus.OFFLINE or bool(
            self.handover or self.agents_unregistered
        )


def _running(node_id: str):
    # run_active_node_idx.
    return AgentRun.objects.filter(node_id=node_id, status=RunStatus.RUNNING)


def node_shutdown(
    *,
    node_id: str,
    grace_s: float = DEFAULT_GRACE_S,
    reason: str = "graceful shutdown",
    poll_s: float = POLL_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ShutdownResult:
    """DRAINING -> wait for RUNNING runs (grace_s) -> hand the rest over -> agents
    unregistered -> OFFLINE. Raises NodeNotFound for a node that never registered.

    Safe to repeat: an OFFLINE node with nothing left on it is left as it is.
    """
    node = node_get(node_id=node_id)
    result = ShutdownResult(node_id=node_id, previous_status=node.status)
    if node.status in DRAINABLE_NODE_STATES:
        node_drain(node_id=node_id)

    if node.status in WAITING_NODE_STATES:
        in_flight = set(_running(node_id).values_list("pk", flat=True))
        result.in_flight = len(in_flight)
        started = clock()
        deadline = started + max(0.0, grace_s)
        # Polling: the node's runs end in other threads or processes, and a poll every
        # POLL_S over an indexed handful of rows costs nothing next to the wait itself.
        while in_flight and _running(node_id).exists() and clock() < deadline:
            sleep(poll_s)
        result.waited_s = round(clock() - started, 3)
        still = set(_running(node_id).filter(pk__in=in_flight).values_list("pk", flat=True))
        result.finished = len(in_flight - still)

    # PENDING runs routed to the node's own queue wait there too: nobody else consumes it.
    if AgentRun.objects.filter(
        node_id=node_id, status__in=[RunStatus.PENDING, RunStatus.RUNNING]
    ).exists():
        # The failover path: same region first, then headroom; the default queue when no
        # other node is live. It marks the node FAILED on the way, OFFLINE follows below.
        result.handover = node_failover(
            node_id=node_id, reason=f"{reason}: runs left after the {grace_s:g} s grace period"
        )

    result.agents_unregistered = agents_unregister(
        node_id=node_id, agent_ids=agents_registered_on(node_id=node_id), reason=reason
    )
    result.status = node_unregister(node_id=node_id, reason=reason).status
    logger.info(
        "node %s shut down: %s of %s RUNNING run(s) finished in %s s, %s handed over,"
        " %s agent(s) unregistered",
        node_id,
        result.finished,
        result.in_flight,
        result.waited_s,
        result.handover.reassigned_runs if result.handover else 0,
        len(result.agents_unregistered),
    )
    return result
