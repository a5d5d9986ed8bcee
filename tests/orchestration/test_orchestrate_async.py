"""Async runs on a real Celery worker process, with a Redis broker and PostgreSQL."""

from __future__ import annotations

import logging
import time

import pytest
import redis
from kombu import exceptions as kombu_exceptions

from orchestration import sending
from orchestration.tasks import execute_run
from runs.choices import TERMINAL_RUN_STATES, RunStatus
from runs.models import AgentRun, AgentRunMetric, ToolExecution
from tests.orchestration.workers import WorkerProcess, private_queue

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def queue(settings):
    settings.RUN_DEFAULT_QUEUE = private_queue()
    return settings.RUN_DEFAULT_QUEUE


@pytest.fixture
def worker(queue):
    process = WorkerProcess("worker-a", queue).start()
    yield process
    process.stop()


def wait_terminal(run_id, timeout: float = 30.0) -> AgentRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = AgentRun.objects.get(pk=run_id)
        if run.status in TERMINAL_RUN_STATES:
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} is still {run.status} after {timeout}s")


def test_async_run_is_accepted_then_executed_by_the_worker(tenant_a, make_agent, worker):
    make_agent("Sleeper", "test-sleep", intents=["nap"])
    response = tenant_a.client.post(
        "/api/orchestrate",
        {"intent": "nap", "mode": "async", "payload": {"sleep_ms": 20}},
        format="json",
    )
    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["success"] is True
    assert body["status"] == "accepted"
    assert "data" not in body
    run = wait_terminal(body["runId"])
    assert run.status == RunStatus.SUCCESS
    assert run.output == {"slept": 20, "echo": {"sleep_ms": 20}}
    assert run.node_id == "worker-a"
    assert run.metrics["queueWaitMs"] >= 0
    assert AgentRunMetric.objects.filter(run=run, name="queue_wait_ms").exists()
    assert ToolExecution.objects.filter(run=run).count() == 1
    detail = tenant_a.client.get(f"/api/runs/{run.pk}/").json()
    assert detail["status"] == "SUCCESS"


def test_two_workers_racing_for_one_run_execute_it_once(tenant_a, make_agent, queue):
    workers = [WorkerProcess(f"racer-{i}", queue, concurrency=2).start() for i in range(2)]
    try:
        make_agent("Sleeper", "test-sleep", intents=["nap"])
        run_ids = []
        for _ in range(10):
            response = tenant_a.client.post(
                "/api/orchestrate",
                {"intent": "nap", "mode": "async", "payload": {"sleep_ms": 50}},
                format="json",
            )
            run_ids.append(response.json()["runId"])
            # Every run is delivered three more times: four deliveries race for each run.
            for _ in range(3):
                execute_run.apply_async(args=[run_ids[-1]], queue=queue)
        for run_id in run_ids:
            run = wait_terminal(run_id)
            assert run.status == RunStatus.SUCCESS
            assert run.attempt == 1  # claimed exactly once
            assert AgentRunMetric.objects.filter(run=run, name="attempts").count() == 1
            assert ToolExecution.objects.filter(run=run).count() == 1
    finally:
        for process in workers:
            process.stop()


@pytest.mark.parametrize(
    "failure",
    [
        kombu_exceptions.OperationalError("broker unreachable"),
        redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'."),
    ],
    ids=["broker unavailable", "message refused"],
)
def test_an_accepted_run_whose_message_cannot_be_sent_waits_for_the_reaper(
    tenant_a, make_agent, queue, monkeypatch, caplog, failure
):
    """The run is committed before its message is sent: a send that fails leaves it
    PENDING (the reaper re-enqueues it after nodes.pending_timeout_s) and the caller still
    gets its 202, never a 500 that would make it submit the run twice."""

    def refuse(run_id, **options):
        raise failure

    monkeypatch.setattr(sending, "execute_run_send", refuse)
    make_agent("Sleeper", "test-sleep", intents=["nap"])
    with caplog.at_level(logging.WARNING, logger="orchestration.services.dispatch"):
        response = tenant_a.client.post(
            "/api/orchestrate",
            {"intent": "nap", "mode": "async", "payload": {"sleep_ms": 1}},
            format="json",
        )
    assert response.status_code == 202, response.json()
    run = AgentRun.objects.get(pk=response.json()["runId"])
    assert run.status == RunStatus.PENDING and run.queued_at is not None
    assert f"run {run.pk} not enqueued, the reaper will" in caplog.text
