"""Two real Celery workers as two nodes; one is SIGKILLed with runs in flight.

Its runs are failed over to the survivor and finish there; afterwards no run is RUNNING
or PENDING, every run succeeded, and none carries results from two attempts.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from datetime import timedelta

import pytest
from django.db.models import Count, Q
from django.utils import timezone

from orchestration.choices import EventType, NodeStatus
from orchestration.models import OrchestratorEvent, OrchestratorNode
from orchestration.queues import node_queue
from orchestration.services import reaper
from orchestration.services.config import config_current
from orchestration.tasks import execute_run
from runs import services as run_services
from runs.choices import ACTIVE_RUN_STATES, RunMode, RunStatus
from runs.models import AgentRun, AgentRunMetric, ToolExecution
from tests.orchestration.workers import WorkerProcess, private_queue

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

RUNS = 200
CONCURRENCY = 4


def wait_for(condition, *, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def active_count() -> int:
    return AgentRun.objects.filter(status__in=ACTIVE_RUN_STATES).count()


def test_a_killed_workers_runs_are_failed_over_and_finish_on_the_other_node(
    tenant_a, make_agent, settings
):
    started = time.monotonic()
    queue = private_queue()
    # Every run goes to the queue both workers consume (routing is tested elsewhere).
    settings.RUN_DEFAULT_QUEUE = queue
    suffix = uuid.uuid4().hex[:8]
    survivor_id, victim_id = f"fleet-a-{suffix}", f"fleet-b-{suffix}"
    env = {"NODE_AUTOREGISTER": "true", "RUN_DEFAULT_QUEUE": queue}
    survivor = WorkerProcess(survivor_id, queue, concurrency=CONCURRENCY, env=env)
    victim = WorkerProcess(victim_id, queue, concurrency=CONCURRENCY, env=env)
    try:
        survivor.start()
        victim.start()
        # The workers registered themselves (worker_ready) with their concurrency.
        nodes = {n.node_id: n for n in OrchestratorNode.objects.all()}
        for node_id in (survivor_id, victim_id):
            node = nodes[node_id]
            assert node.status == NodeStatus.ACTIVE
            assert node.capacity == CONCURRENCY
            assert node_queue(node_id) in node.metadata["queues"]
            assert queue in node.metadata["queues"]
            assert "test-sleep" in node.capabilities

        agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
        run_ids = [
            str(
                run_services.run_create(
                    organization=tenant_a.organization,
                    agent=agent,
                    intent="nap",
                    input={"sleep_ms": 50},
                    mode=RunMode.ASYNC,
                ).pk
            )
            for _ in range(RUNS)
        ]
        # All 200 at once, so they are all in flight together.
        for run_id in run_ids:
            execute_run.apply_async(args=[run_id], queue=queue)

        # Kill the victim while it holds runs (and after it finished a few).
        def victim_busy() -> bool:
            mine = AgentRun.objects.filter(node_id=victim_id)
            return (
                mine.filter(status=RunStatus.RUNNING).exists()
                and mine.filter(status=RunStatus.SUCCESS).count() >= 5
            )

        wait_for(victim_busy, timeout=30, what="the victim to hold runs")
        os.killpg(victim.process.pid, signal.SIGKILL)
        victim.process.wait(timeout=10)
        in_flight = active_count()
        assert in_flight >= RUNS // 4, f"only {in_flight} runs were left when it died"
        lost = set(
            AgentRun.objects.filter(node_id=victim_id, status=RunStatus.RUNNING).values_list(
                "pk", flat=True
            )
        )
        assert lost, "the victim held no run when it died"

        result = reaper.node_failover(node_id=victim_id)
        assert result.backup_node == survivor_id
        assert result.reassigned_runs >= len(lost)

        # Runs the victim had taken off the queue but not claimed yet are still PENDING,
        # unowned: the reaper re-enqueues them once they look abandoned. Wait until
        # nothing moves any more, then run it with the clock past pending_timeout_s.
        last = [active_count(), time.monotonic()]

        def settled() -> bool:
            count = active_count()
            if count == 0:
                return True
            if count != last[0]:
                last[:] = [count, time.monotonic()]
                return False
            running = AgentRun.objects.filter(status=RunStatus.RUNNING).exists()
            return not running and time.monotonic() - last[1] > 2.0

        wait_for(settled, timeout=45, what="the survivor to drain the queue", interval=0.1)
        if active_count():
            timeout_s = config_current()["nodes"]["pending_timeout_s"]
            reaped = reaper.runs_reap(now=timezone.now() + timedelta(seconds=timeout_s + 1))
            assert reaped.requeued_pending and not reaped.failed_pending
            wait_for(lambda: active_count() == 0, timeout=20, what="the re-enqueued runs")

        runs = AgentRun.objects.filter(pk__in=run_ids)
        assert runs.count() == RUNS
        assert not runs.filter(status__in=ACTIVE_RUN_STATES).exists()
        assert set(runs.values_list("status", flat=True)) == {RunStatus.SUCCESS}

        # No run carries results from two attempts: one tool call, one attempts metric.
        per_run = runs.annotate(
            tools=Count("tool_executions", distinct=True),
            attempts_rows=Count("metric_rows", filter=Q(metric_rows__name="attempts")),
        ).values_list("pk", "tools", "attempts_rows")
        assert {(tools, rows) for _, tools, rows in per_run} == {(1, 1)}
        assert ToolExecution.objects.filter(run__in=run_ids).count() == RUNS
        assert AgentRunMetric.objects.filter(run__in=run_ids, name="attempts").count() == RUNS

        # The killed node's runs finished on the survivor, on their second attempt.
        for run in AgentRun.objects.filter(pk__in=lost):
            assert (run.status, run.node_id, run.attempt) == (RunStatus.SUCCESS, survivor_id, 2)
        finished_by = set(runs.values_list("node_id", flat=True))
        assert finished_by == {survivor_id, victim_id}

        assert OrchestratorNode.objects.get(node_id=victim_id).status == NodeStatus.FAILED
        assert OrchestratorNode.objects.get(node_id=survivor_id).status == NodeStatus.ACTIVE
        failover = OrchestratorEvent.objects.get(type=EventType.NODE_FAILOVER)
        assert failover.payload["backupNode"] == survivor_id
        assert not OrchestratorEvent.objects.filter(type=EventType.RUN_STALE_COMPLETION).exists()
    finally:
        victim.stop()
        survivor.stop()
    # The survivor went OFFLINE on its graceful shutdown (worker_shutdown).
    assert OrchestratorNode.objects.get(node_id=survivor_id).status == NodeStatus.OFFLINE
    assert time.monotonic() - started < 90
