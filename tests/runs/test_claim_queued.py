"""run_claim_queued(): a worker claims a queued run and reads it in one statement."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection, transaction

from agents.models import AgentConfig
from runs import services as run_services
from runs.choices import RunStatus
from runs.models import AgentRun
from tests.factories import AgentFactory, DatasetFactory

pytestmark = pytest.mark.django_db


def _queued(tenant, **extra) -> AgentRun:
    agent = AgentFactory(organization=tenant.organization, config={"timeout_ms": 5000})
    AgentConfig.objects.create(agent=agent, key="model", value={"name": "small"})
    return run_services.run_create(
        organization=tenant.organization,
        agent=agent,
        intent="nap",
        input={"n": 1},
        mode="async",
        **extra,
    )


def test_the_claimed_run_comes_back_with_its_agent_config_rows_and_organization(
    tenant_a, django_assert_num_queries
):
    queued = _queued(tenant_a)
    with django_assert_num_queries(1):
        run, why_not = run_services.run_claim_queued(
            run_id=str(queued.pk), node_id="node-a", lease_seconds=30
        )
        assert why_not == ""
        assert (run.status, run.attempt, run.node_id) == (RunStatus.RUNNING, 1, "node-a")
        assert run.lease_expires_at > run.started_at >= run.queued_at
        assert run.input == {"n": 1} and run.meta["mode"] == "async"  # JSON converted
        assert run.agent.pk == queued.agent_id and run.agent.config == {"timeout_ms": 5000}
        assert run.agent.config_rows == {"model": {"name": "small"}}
        assert run.organization.slug == tenant_a.organization.slug
    stored = AgentRun.objects.get(pk=queued.pk)
    assert (stored.status, stored.attempt, stored.node_id) == (RunStatus.RUNNING, 1, "node-a")


def test_a_run_is_claimed_once_and_a_missing_one_is_said_so(tenant_a):
    queued = _queued(tenant_a)
    first, _ = run_services.run_claim_queued(run_id=queued.pk, node_id="a", lease_seconds=30)
    second, why_not = run_services.run_claim_queued(run_id=queued.pk, node_id="b", lease_seconds=30)
    assert first is not None and second is None
    assert why_not == "skipped:RUNNING"
    assert AgentRun.objects.get(pk=queued.pk).node_id == "a"
    assert run_services.run_claim_queued(run_id=uuid.uuid4(), node_id="a", lease_seconds=30) == (
        None,
        "missing",
    )


def test_a_dataset_is_read_when_used(tenant_a, django_assert_num_queries):
    dataset = DatasetFactory(organization=tenant_a.organization)
    queued = _queued(tenant_a, dataset=dataset)
    run, _ = run_services.run_claim_queued(run_id=queued.pk, node_id="a", lease_seconds=30)
    with django_assert_num_queries(1):
        assert run.dataset == dataset


def _synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="commit modes: PostgreSQL")
@pytest.mark.django_db(transaction=True)
def test_the_claim_alone_commits_without_waiting_for_the_disk(tenant_a):
    """The claim's transaction commits asynchronously (a crash may lose the claim, never a
    run: the row is PENDING again and the reaper re-enqueues it); the setting is local to
    that transaction, so the finish that follows on the connection waits for the disk."""
    first, second = _queued(tenant_a), _queued(tenant_a)
    assert _synchronous_commit() == "on"
    with transaction.atomic():
        run, _ = run_services.run_claim_queued(
            run_id=str(first.pk), node_id="node-a", lease_seconds=30
        )
        assert run.status == RunStatus.RUNNING
        assert _synchronous_commit() == "off"
    assert _synchronous_commit() == "on"
    # As a worker runs it: the statement in a transaction of its own.
    run, _ = run_services.run_claim_queued(
        run_id=str(second.pk), node_id="node-a", lease_seconds=30
    )
    assert run.status == RunStatus.RUNNING
    assert _synchronous_commit() == "on"
