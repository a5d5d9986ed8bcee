"""The number of SQL statements of one run is pinned: a regression on the hot path fails CI.

Sync run (POST /api/orchestrate), 3 statements, no transaction block: key lookup, the
run's insert (already claimed by this node: RUNNING, attempt 1, its lease -- no claim
UPDATE), and the finish -- one statement that updates the run (fenced on status and
attempt) and inserts its metric rows, steps, tool executions and its run.succeeded event.
Intent resolution reads the definitions this process read before (their version unchanged
in Redis); right after a definition changed it reads them again: 1 more statement (the
agents declaring the intent, each with its config rows aggregated).

Async accept, 2, no transaction block either: key lookup, and the PENDING insert with the
routing read of the nodes in the same statement (the task is sent once it is committed,
i.e. at once); 1 more after a definition changed. With a fleet whose nodes consume their
own queues, 3: key lookup, the routing read (the nodes with their runs in flight), and the
insert naming the node (a process's first such run: the insert reading the nodes, then
an UPDATE naming the node -- 3 as well). Async execution, 2: the claim, which returns the
claimed run with its agent, the agent's config rows and its organization (one UPDATE ...
RETURNING), and the finish.

Both are measured outside any transaction, as a server runs them (the test database's own
transaction would add savepoints).
"""

from __future__ import annotations

import pytest
import redis

from agents.models import Agent
from orchestration.models import OrchestratorNode
from orchestration.queues import node_queue
from orchestration.tasks import execute_run
from runs.models import AgentRun
from tests.orchestration.workers import private_queue

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_policies")]

SYNC_RUN_QUERIES = 3
ASYNC_ACCEPT_QUERIES = 2
ASYNC_ACCEPT_NODE_QUERIES = 3  # runs routed to a node's own queue
ASYNC_EXECUTE_QUERIES = 2
RESOLUTION_QUERIES = 1  # after a definition changed


@pytest.fixture
def warm(tenant_a, make_agent):
    """One run first, so per-process caches (live configuration) are as in a running server."""
    make_agent("Sleeper", "test-sleep", intents=["nap"])
    tenant_a.client.post("/api/orchestrate", {"intent": "nap"}, format="json")
    return tenant_a


@pytest.mark.django_db(transaction=True)
def test_one_sync_run(warm, django_assert_num_queries):
    with django_assert_num_queries(SYNC_RUN_QUERIES):
        response = warm.client.post("/api/orchestrate", {"intent": "nap"}, format="json")
    assert response.status_code == 200


@pytest.mark.django_db(transaction=True)
def test_one_sync_run_after_a_definition_changed(warm, django_assert_num_queries):
    agent = Agent.objects.get(organization=warm.organization, slug="sleeper")
    agent.description = "edited"
    agent.save()
    with django_assert_num_queries(SYNC_RUN_QUERIES + RESOLUTION_QUERIES):
        response = warm.client.post("/api/orchestrate", {"intent": "nap"}, format="json")
    assert response.status_code == 200
    with django_assert_num_queries(SYNC_RUN_QUERIES):
        response = warm.client.post("/api/orchestrate", {"intent": "nap"}, format="json")
    assert response.status_code == 200


@pytest.mark.django_db(transaction=True)
def test_one_async_run(warm, settings, django_assert_num_queries):
    settings.RUN_DEFAULT_QUEUE = private_queue()  # the message is sent (no worker reads it)
    try:
        with django_assert_num_queries(ASYNC_ACCEPT_QUERIES):
            response = warm.client.post(
                "/api/orchestrate", {"intent": "nap", "mode": "async"}, format="json"
            )
        assert response.status_code == 202
        run_id = response.json()["runId"]
        with django_assert_num_queries(ASYNC_EXECUTE_QUERIES):
            assert execute_run(run_id) == "SUCCESS"
        assert AgentRun.objects.get(pk=run_id).status == "SUCCESS"
    finally:
        redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(settings.RUN_DEFAULT_QUEUE)


@pytest.mark.django_db(transaction=True)
def test_one_async_run_to_a_node_queue(warm, settings, django_assert_num_queries):
    node = OrchestratorNode.objects.create(
        node_id="counted-node",
        capacity=100,
        capabilities=["test-sleep"],
        metadata={"queues": [node_queue("counted-node")]},
    )
    try:
        for _ in range(2):  # a process's first such run, then the next ones
            with django_assert_num_queries(ASYNC_ACCEPT_NODE_QUERIES):
                response = warm.client.post(
                    "/api/orchestrate", {"intent": "nap", "mode": "async"}, format="json"
                )
            assert response.status_code == 202
            assert AgentRun.objects.get(pk=response.json()["runId"]).node_id == node.node_id
    finally:
        redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(node_queue(node.node_id))
