from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from rest_framework.test import APIClient

from orchestration.tasks import execute_run
from runs import services as run_services
from runs.choices import RunStatus
from runs.models import AgentRun
from runs.services import RunOutcome
from tests.orchestration.handlers import CALLS


def post(tenant, body, key=None):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    return tenant.client.post("/api/orchestrate", body, format="json", **headers)


@pytest.mark.django_db
class TestIdempotency:
    def test_same_key_and_input_returns_the_same_run_and_envelope(self, tenant_a, make_agent):
        make_agent("Sleeper", "test-sleep", intents=["nap"])
        first = post(tenant_a, {"intent": "nap", "payload": {"a": 1}}, key="k1")
        second = post(tenant_a, {"intent": "nap", "payload": {"a": 1}}, key="k1")
        assert first.status_code == second.status_code == 200
        assert first.json() == second.json()
        assert AgentRun.objects.count() == 1
        assert CALLS[first.json()["runId"]] == 1  # not executed again

    def test_same_key_with_different_input_conflicts(self, tenant_a, make_agent):
        make_agent("Sleeper", "test-sleep", intents=["nap"])
        post(tenant_a, {"intent": "nap", "payload": {"a": 1}}, key="k1")
        response = post(tenant_a, {"intent": "nap", "payload": {"a": 2}}, key="k1")
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "IDEMPOTENCY_CONFLICT"
        assert AgentRun.objects.count() == 1

    def test_in_flight_first_request_answers_409(self, tenant_a, make_agent):
        agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
        fingerprint_source = post(tenant_a, {"intent": "nap", "payload": {"a": 1}}, key="probe")
        template = AgentRun.objects.get(pk=fingerprint_source.json()["runId"])
        # A first request with key k2 that is still running.
        AgentRun.objects.create(
            organization=tenant_a.organization,
            agent=agent,
            intent="nap",
            input={"a": 1},
            input_hash=template.input_hash,
            idempotency_key="k2",
            status=RunStatus.RUNNING,
            meta={"mode": "sync"},
        )
        response = post(tenant_a, {"intent": "nap", "payload": {"a": 1}}, key="k2")
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "IDEMPOTENCY_IN_PROGRESS"

    def test_keys_are_scoped_per_organization(self, tenant_a, tenant_b, make_agent):
        make_agent("Sleeper", "test-sleep", intents=["nap"])
        make_agent("Sleeper", "test-sleep", intents=["nap"], tenant=tenant_b)
        a = post(tenant_a, {"intent": "nap"}, key="shared")
        b = post(tenant_b, {"intent": "nap"}, key="shared")
        assert a.status_code == b.status_code == 200
        assert a.json()["runId"] != b.json()["runId"]


@pytest.mark.django_db(transaction=True)
def test_100_concurrent_posts_with_one_key_create_exactly_one_run(tenant_a, make_agent):
    make_agent("Sleeper", "test-sleep", intents=["nap"], config={"rate_limit": {"limit": 1000}})

    def one(_):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {tenant_a.raw_key}")
        try:
            response = client.post(
                "/api/orchestrate",
                {"intent": "nap", "payload": {"sleep_ms": 30}},
                format="json",
                HTTP_IDEMPOTENCY_KEY="race",
            )
            return response.status_code, response.json()
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(one, range(100)))
    assert AgentRun.objects.filter(idempotency_key="race").count() == 1
    run = AgentRun.objects.get(idempotency_key="race")
    statuses = {status for status, _ in results}
    assert statuses <= {200, 409}, statuses
    assert {body["runId"] for _, body in results} == {str(run.pk)}
    assert CALLS[str(run.pk)] == 1


@pytest.mark.django_db
class TestCancel:
    def test_pending_run_is_cancelled_at_once_and_a_late_worker_does_nothing(
        self, tenant_a, make_agent, django_capture_on_commit_callbacks
    ):
        make_agent("Sleeper", "test-sleep", intents=["nap"])
        with django_capture_on_commit_callbacks(execute=False):
            run_id = post(tenant_a, {"intent": "nap", "mode": "async"}).json()["runId"]
        response = tenant_a.client.post(f"/api/runs/{run_id}/cancel/")
        assert response.status_code == 200
        assert response.json()["status"] == "CANCELLED"
        assert execute_run(run_id) == "skipped:CANCELLED"
        assert CALLS[run_id] == 0
        assert AgentRun.objects.get(pk=run_id).status == RunStatus.CANCELLED

    def test_cancelling_an_ended_run_answers_409(self, tenant_a, make_agent):
        make_agent("Sleeper", "test-sleep", intents=["nap"])
        run_id = post(tenant_a, {"intent": "nap"}).json()["runId"]
        response = tenant_a.client.post(f"/api/runs/{run_id}/cancel/")
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "RUN_NOT_ACTIVE"

    def test_another_organizations_run_cannot_be_cancelled(self, tenant_a, tenant_b, make_agent):
        make_agent("Sleeper", "test-sleep", intents=["nap"], tenant=tenant_b)
        run_id = post(tenant_b, {"intent": "nap"}).json()["runId"]
        assert tenant_a.client.post(f"/api/runs/{run_id}/cancel/").status_code == 404
        assert tenant_a.client.post(f"/api/runs/{run_id}/retry/").status_code == 404

    def test_retry_creates_a_linked_run_with_the_same_input(
        self, tenant_a, make_agent, django_capture_on_commit_callbacks
    ):
        make_agent("Refuser", "test-fail", intents=["refuse"])
        original = post(tenant_a, {"intent": "refuse", "payload": {"x": 1}}).json()["runId"]
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            response = tenant_a.client.post(f"/api/runs/{original}/retry/")
        assert response.status_code == 202
        body = response.json()
        assert body["status"] == "accepted"
        assert body["retryOf"] == original
        retry = AgentRun.objects.get(pk=body["runId"])
        assert retry.retry_of_id is not None and str(retry.retry_of_id) == original
        assert retry.input == {"x": 1}
        assert retry.status == RunStatus.PENDING
        assert len(callbacks) == 1  # enqueued once the row is committed


@pytest.mark.django_db(transaction=True)
def test_running_run_sees_ctx_cancelled_and_ends_cancelled(tenant_a, make_agent):
    make_agent("Waiter", "test-wait-cancel", intents=["wait"], config={"timeout_s": 20})
    outcome = {}

    def run_sync():
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {tenant_a.raw_key}")
        try:
            response = client.post(
                "/api/orchestrate", {"intent": "wait", "payload": {"max_s": 15}}, format="json"
            )
            outcome["status"], outcome["body"] = response.status_code, response.json()
        finally:
            connection.close()

    thread = threading.Thread(target=run_sync)
    thread.start()
    deadline = time.monotonic() + 10
    while not AgentRun.objects.filter(status=RunStatus.RUNNING).exists():
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.02)
    run = AgentRun.objects.get()
    response = tenant_a.client.post(f"/api/runs/{run.pk}/cancel/")
    assert response.status_code == 200
    assert response.json()["cancel_requested_at"]
    thread.join(timeout=15)
    assert not thread.is_alive()
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert outcome["status"] == 409
    assert outcome["body"]["error"]["code"] == "RUN_CANCELLED"


@pytest.mark.django_db
class TestClaimAndFencing:
    def test_a_run_is_claimed_once(self, tenant_a, make_agent):
        from tests.factories import RunFactory

        run = RunFactory(agent=make_agent("Sleeper", "test-sleep"))
        copy = AgentRun.objects.get(pk=run.pk)
        assert run_services.run_claim(run=run, node_id="n1", lease_seconds=30) is True
        assert run_services.run_claim(run=copy, node_id="n2", lease_seconds=30) is False
        assert AgentRun.objects.get(pk=run.pk).node_id == "n1"

    def test_a_stale_attempt_writes_nothing(self, tenant_a, make_agent):
        from tests.factories import RunFactory

        run = RunFactory(agent=make_agent("Sleeper", "test-sleep"))
        assert run_services.run_claim(run=run, node_id="n1", lease_seconds=30)
        # The run is reassigned: a newer attempt now owns it.
        AgentRun.objects.filter(pk=run.pk).update(attempt=run.attempt + 1, node_id="n2")
        written = run_services.run_finish(
            run=run,
            outcome=RunOutcome(status=RunStatus.SUCCESS, output={"stale": True}),
            metrics={},
            meta={},
        )
        assert written is False
        fresh = AgentRun.objects.get(pk=run.pk)
        assert fresh.status == RunStatus.RUNNING
        assert fresh.output is None
