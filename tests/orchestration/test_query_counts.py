"""The number of SQL statements of one run is pinned: a regression on the hot path fails CI.

Sync run (POST /api/orchestrate): key lookup, intent resolution (2), the PENDING insert,
the claim, the fenced finish, then one INSERT per kind of record (metrics, steps, tool
executions) plus the organization's tool lookup — with the savepoints of the two atomic
blocks. Async: the worker's read of the run, then the same execution path.
"""

from __future__ import annotations

import pytest

from orchestration.tasks import execute_run
from runs.models import AgentRun

pytestmark = pytest.mark.django_db

SYNC_RUN_QUERIES = 14
ASYNC_ACCEPT_QUERIES = 7
ASYNC_EXECUTE_QUERIES = 10


@pytest.fixture
def warm(tenant_a, make_agent):
    """One run first, so per-process caches (live configuration) are as in a running server."""
    make_agent("Sleeper", "test-sleep", intents=["nap"])
    tenant_a.client.post("/api/orchestrate", {"intent": "nap"}, format="json")
    return tenant_a


def test_one_sync_run(warm, django_assert_num_queries):
    with django_assert_num_queries(SYNC_RUN_QUERIES):
        response = warm.client.post("/api/orchestrate", {"intent": "nap"}, format="json")
    assert response.status_code == 200


def test_one_async_run(warm, django_assert_num_queries, django_capture_on_commit_callbacks):
    with (
        django_assert_num_queries(ASYNC_ACCEPT_QUERIES),
        django_capture_on_commit_callbacks(execute=False),
    ):
        response = warm.client.post(
            "/api/orchestrate", {"intent": "nap", "mode": "async"}, format="json"
        )
    assert response.status_code == 202
    run_id = response.json()["runId"]
    with django_assert_num_queries(ASYNC_EXECUTE_QUERIES):
        assert execute_run(run_id) == "SUCCESS"
    assert AgentRun.objects.get(pk=run_id).status == "SUCCESS"
