"""bootstrap_orchestrator and shutdown_orchestrator, in this process, on PostgreSQL.

Bootstrapping twice leaves every row as it was and publishes nothing the second time;
shutting a node down with runs in flight lets the ones that finish in time finish,
hands the others over (PENDING, enqueued again) and leaves the node OFFLINE with the
agents it announced unregistered. Real processes: test_lifecycle_processes.py.
"""

from __future__ import annotations

import io
import os
import socket
import threading
import time
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connection, connections
from django.utils import timezone

from agents.choices import AgentStatus
from agents.demo import DEMO_DATASET_SLUG, DEMO_ORGANIZATION_SLUG
from agents.handlers import registry
from agents.models import (
    Agent,
    AgentCapability,
    AgentConfig,
    ApiKey,
    Dataset,
    Organization,
    OrganizationMember,
)
from orchestration import sending
from orchestration.choices import EventType, NodeStatus
from orchestration.models import OrchestratorEvent, OrchestratorNode
from orchestration.policies import CircuitState, RedisPolicyStore, policy_store_reset
from orchestration.queues import default_queue, node_queue
from orchestration.services import health
from orchestration.services.lifecycle import agents_registered_on
from runs import services as run_services
from runs.choices import RunMode, RunStatus
from runs.models import AgentRun

NODE = "lifecycle-node"


def run(command: str, *args: str) -> str:
    out = io.StringIO()
    call_command(command, *args, stdout=out)
    return out.getvalue()


def rows(model) -> list[dict]:
    return list(model.objects.order_by("pk").values())


def database_state() -> dict:
    """Every row bootstrap could touch, timestamps included, and the event log."""
    return {
        "organizations": rows(Organization),
        "members": rows(OrganizationMember),
        "users": rows(get_user_model()),
        "api_keys": rows(ApiKey),
        "agents": rows(Agent),
        "capabilities": rows(AgentCapability),
        "agent_configs": rows(AgentConfig),
        "datasets": rows(Dataset),
        "nodes": rows(OrchestratorNode),
        "events": list(
            OrchestratorEvent.objects.order_by("id").values("id", "type", "agent_id", "node_id")
        ),
    }


def agent_events(event_type: str, node: str = NODE):
    return OrchestratorEvent.objects.filter(type=event_type, node_id=node)


# --- bootstrap ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_bootstrap_twice_gives_the_same_database_state(tenant_a, tenant_b, make_agent):
    make_agent("Sleeper", "test-sleep", intents=["nap"])
    make_agent("Paused", "test-sleep", status=AgentStatus.PAUSED)
    make_agent("Ghost", "no-such-handler")

    first = run("bootstrap_orchestrator", "--all", "--demo", "--node", NODE)
    assert "Bootstrapped: changed" in first
    after_first = database_state()

    # Every organization has the code-declared definitions; every ACTIVE agent whose
    # handler this process has is announced by this node, once.
    for organization in Organization.objects.all():
        names = set(organization.agents.values_list("name", flat=True))
        assert {d.name for d in registry.definitions()} <= names
    servable = {
        a.pk
        for a in Agent.objects.filter(status=AgentStatus.ACTIVE)
        if registry.is_registered(a.handler)
    }
    assert Agent.objects.get(name="Sleeper").pk in servable
    assert agents_registered_on(node_id=NODE) == servable
    registered = agent_events(EventType.AGENT_REGISTERED)
    assert registered.count() == len(servable)
    event = registered.get(agent__name="Sleeper")
    assert event.payload["node"] == NODE and event.payload["handler"] == "test-sleep"
    assert not registered.filter(agent__name__in=["Paused", "Ghost"]).exists()
    assert "no handler here for Ghost" in first

    node = OrchestratorNode.objects.get(node_id=NODE)
    assert node.status == NodeStatus.ACTIVE
    assert node.capabilities == registry.keys()
    assert node.metadata == {"role": "bootstrap", "queues": []}

    second = run("bootstrap_orchestrator", "--all", "--demo", "--node", NODE)
    assert database_state() == after_first  # no row written, no event published
    assert "Nothing changed" in second
    assert "password:" not in second and "acp_" not in second
    for name in ("demo", "definitions", "agents", "node"):
        assert any(line.split()[:2] == [name, "unchanged"] for line in second.splitlines()), (
            f"{name} is not reported unchanged:\n{second}"
        )


@pytest.mark.django_db
def test_bootstrap_demo_creates_the_demo_organization_admin_key_and_dataset():
    out = run("bootstrap_orchestrator", "--demo", "--node", NODE)

    organization = Organization.objects.get(slug=DEMO_ORGANIZATION_SLUG)
    user = get_user_model().objects.get(username="admin")
    assert user.is_superuser
    assert OrganizationMember.objects.filter(organization=organization, user=user).exists()
    assert Dataset.objects.filter(organization=organization, slug=DEMO_DATASET_SLUG).exists()
    assert organization.agents.count() == len(registry.definitions())

    # The secrets are printed once, and they work.
    password = next(
        line.split("password:")[1].strip() for line in out.splitlines() if "password:" in line
    )
    assert user.check_password(password)
    raw_key = next(word for word in out.split() if word.startswith("acp_"))
    assert ApiKey.objects.get(key_hash=ApiKey.hash_key(raw_key)).organization == organization

    again = run("bootstrap_orchestrator", "--demo", "--node", NODE)
    assert password not in again and raw_key not in again
    assert "Nothing changed" in again


@pytest.mark.django_db
def test_a_second_bootstrap_announces_only_what_changed(tenant_a, make_agent):
    sleeper = make_agent("Sleeper", "test-sleep", intents=["nap"])
    run("bootstrap_orchestrator", "--org", "org-a", "--node", NODE)
    sleeper.status = AgentStatus.PAUSED
    sleeper.save()
    napper = make_agent("Napper", "test-sleep", intents=["doze"])

    out = run("bootstrap_orchestrator", "--org", "org-a", "--node", NODE)
    assert "registered Napper" in out and "unregistered Sleeper" in out
    assert agent_events(EventType.AGENT_UNREGISTERED).get().agent == sleeper
    assert agent_events(EventType.AGENT_REGISTERED).filter(agent=napper).count() == 1
    registered = agents_registered_on(node_id=NODE)
    assert napper.pk in registered and sleeper.pk not in registered


@pytest.mark.django_db
def test_bootstrap_registers_the_node_again_when_it_is_not_active(tenant_a):
    run("bootstrap_orchestrator", "--org", "org-a", "--node", NODE)
    OrchestratorNode.objects.filter(node_id=NODE).update(status=NodeStatus.OFFLINE)
    out = run("bootstrap_orchestrator", "--org", "org-a", "--node", NODE)
    assert "(was OFFLINE)" in out
    assert OrchestratorNode.objects.get(node_id=NODE).status == NodeStatus.ACTIVE


@pytest.mark.django_db
def test_bootstrap_needs_a_known_organization(tenant_a):
    with pytest.raises(CommandError, match="--org <slug>, --all or --demo"):
        run("bootstrap_orchestrator", "--node", NODE)
    with pytest.raises(CommandError, match="no organization 'nope'"):
        run("bootstrap_orchestrator", "--org", "nope", "--node", NODE)
    assert not OrchestratorNode.objects.exists()


@pytest.mark.django_db
def test_bootstrap_says_what_is_embedded(tenant_a, settings):
    settings.REDIS_URL = None
    settings.CELERY_BROKER_URL = "memory://"
    settings.CELERY_TASK_ALWAYS_EAGER = True
    out = run("bootstrap_orchestrator", "--org", "org-a", "--node", NODE)
    table = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.startswith("  ")}
    assert table["database"] == "up"  # PostgreSQL here; SQLite is shown as embedded
    assert table["redis"] == "embedded"
    assert table["broker"] == "embedded"
    assert table["circuits"] == "embedded"  # the process-local policy store


@pytest.mark.django_db
@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs a real Redis (REDIS_URL)")
def test_bootstrap_reads_the_circuits_from_the_shared_store(tenant_a, make_agent):
    sleeper = make_agent("Sleeper", "test-sleep", intents=["nap"])
    make_agent("Steady", "test-sleep", intents=["rest"])
    prefix = f"test-lifecycle-{uuid.uuid4().hex[:8]}:"
    store = RedisPolicyStore(os.environ["REDIS_URL"], key_prefix=prefix)
    try:
        store.circuit_force(agent_key=str(sleeper.pk), state=CircuitState.OPEN)
        policy_store_reset(store)
        out = run("bootstrap_orchestrator", "--org", "org-a", "--node", NODE)
        line = next(line for line in out.splitlines() if line.strip().startswith("circuits"))
        assert "redis" in line and "FORCED_OPEN Sleeper" in line
        assert "Steady" not in line  # CLOSED circuits are counted, not named
    finally:
        keys = list(store.client.scan_iter(f"{prefix}*"))
        if keys:
            store.client.delete(*keys)
        store.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.django_db
def test_bootstrap_fails_when_the_database_is_unreachable(tenant_a, monkeypatch):
    default = connections["default"]
    unreachable = type(default)(
        {
            **default.settings_dict,
            "HOST": "127.0.0.1",
            "PORT": str(closed_port()),
            "OPTIONS": {**default.settings_dict.get("OPTIONS", {}), "connect_timeout": 1},
        },
        alias="unreachable",
    )
    monkeypatch.setattr(health, "_database_connection", lambda: unreachable)
    out = io.StringIO()
    try:
        with pytest.raises(CommandError, match="database is unreachable"):
            call_command("bootstrap_orchestrator", "--all", "--node", NODE, stdout=out)
    finally:
        unreachable.close()
    assert any(line.split()[:2] == ["database", "down"] for line in out.getvalue().splitlines())
    assert not OrchestratorNode.objects.exists()
    assert not OrchestratorEvent.objects.exists()


# --- shutdown ----------------------------------------------------------------------------


@pytest.fixture
def dispatched(monkeypatch):
    """What would reach the broker: (run id, queue) of every execute_run enqueued."""
    sent: list[tuple[str, str]] = []

    def send(run_id, **options):
        sent.append((run_id, options.get("queue")))

    monkeypatch.setattr(sending, "execute_run_send", send)
    return sent


def running_on(node_id: str, agent, count: int) -> list[AgentRun]:
    runs = []
    for _ in range(count):
        run_ = run_services.run_create(
            organization=agent.organization,
            agent=agent,
            intent="nap",
            input={"sleep_ms": 1},
            mode=RunMode.ASYNC,
        )
        assert run_services.run_claim(run=run_, node_id=node_id, lease_seconds=60)
        runs.append(run_)
    return runs


def pending_on(node_id: str, agent) -> AgentRun:
    run_ = run_services.run_create(
        organization=agent.organization, agent=agent, intent="nap", input={}, mode=RunMode.ASYNC
    )
    AgentRun.objects.filter(pk=run_.pk).update(node_id=node_id)
    return run_


def finish_later(run_: AgentRun, delay_s: float) -> threading.Thread:
    """The node's worker finishing one of its runs while the shutdown waits."""

    def finish() -> None:
        try:
            time.sleep(delay_s)
            assert run_services.run_finish(
                run=run_,
                outcome=run_services.RunOutcome(status=RunStatus.SUCCESS, output={"ok": True}),
                metrics={},
                meta=run_.meta,
            )
        finally:
            connection.close()

    thread = threading.Thread(target=finish)
    thread.start()
    return thread


@pytest.mark.django_db(transaction=True)
def test_shutdown_with_runs_in_flight_loses_none(tenant_a, make_agent, dispatched):
    agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
    run("bootstrap_orchestrator", "--org", "org-a", "--node", NODE)
    announced = agents_registered_on(node_id=NODE)
    assert agent.pk in announced
    OrchestratorNode.objects.create(
        node_id="backup",
        region="local",
        status=NodeStatus.ACTIVE,
        capacity=4,
        last_heartbeat_at=timezone.now(),
        metadata={"queues": [node_queue("backup"), default_queue()]},
    )
    quick, *slow = running_on(NODE, agent, 3)
    waiting = pending_on(NODE, agent)
    elsewhere = pending_on("", agent)  # not routed to the node: none of its business

    finisher = finish_later(quick, 0.3)
    started = time.monotonic()
    out = run("shutdown_orchestrator", "--node", NODE, "--grace", "1")
    elapsed = time.monotonic() - started
    finisher.join(timeout=5)

    assert 0.3 <= elapsed < 5, elapsed
    assert "1 of 3 RUNNING run(s) finished" in out
    assert "reassigned to node backup" in out
    node = OrchestratorNode.objects.get(node_id=NODE)
    assert node.status == NodeStatus.OFFLINE

    quick.refresh_from_db()
    assert quick.status == RunStatus.SUCCESS
    moved = {str(r.pk) for r in [*slow, waiting]}
    for run_ in AgentRun.objects.filter(pk__in=moved):
        assert run_.status == RunStatus.PENDING  # handed over, never lost
        assert run_.node_id == "backup"
    assert sorted(dispatched) == sorted((run_id, node_queue("backup")) for run_id in moved)
    elsewhere.refresh_from_db()
    assert elsewhere.status == RunStatus.PENDING and elsewhere.node_id == ""
    assert not AgentRun.objects.filter(node_id=NODE, status=RunStatus.RUNNING).exists()

    # DRAINING first, OFFLINE last, every announced agent unregistered.
    transitions = list(
        OrchestratorEvent.objects.filter(
            node_id=NODE,
            type__in=[EventType.NODE_STATUS_CHANGED, EventType.NODE_UNREGISTERED],
        )
        .order_by("id")
        .values_list("payload__to", flat=True)
    )
    assert transitions[0] == NodeStatus.DRAINING and transitions[-1] == NodeStatus.OFFLINE
    unregistered = agent_events(EventType.AGENT_UNREGISTERED)
    assert set(unregistered.values_list("agent_id", flat=True)) == announced
    assert unregistered.count() == len(announced)
    assert agents_registered_on(node_id=NODE) == set()

    # Again: nothing left to do.
    again = run("shutdown_orchestrator", "--node", NODE, "--grace", "1")
    assert "Nothing changed" in again
    assert agent_events(EventType.AGENT_UNREGISTERED).count() == len(announced)


@pytest.mark.django_db(transaction=True)
def test_shutdown_without_another_node_requeues_on_the_default_queue(
    tenant_a, make_agent, dispatched
):
    agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
    run("bootstrap_orchestrator", "--org", "org-a", "--node", NODE)
    stuck = running_on(NODE, agent, 2)

    out = run("shutdown_orchestrator", "--node", NODE, "--grace", "0.2")
    assert "no healthy backup node" in out
    assert OrchestratorNode.objects.get(node_id=NODE).status == NodeStatus.OFFLINE
    for run_ in stuck:
        run_.refresh_from_db()
        assert run_.status == RunStatus.PENDING and run_.node_id == ""
    assert sorted(dispatched) == sorted((str(r.pk), default_queue()) for r in stuck)


@pytest.mark.django_db
def test_shutdown_of_an_unknown_node_fails():
    with pytest.raises(CommandError, match="no node 'ghost'"):
        run("shutdown_orchestrator", "--node", "ghost")
