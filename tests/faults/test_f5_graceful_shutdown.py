"""F5 Graceful shutdown with runs in flight: none lost.

A worker gets SIGTERM (its main process, as Kubernetes sends it) while it executes runs
and more wait on its own queue and the shared one. Celery's warm shutdown lets the runs in
flight finish there; the node shutdown service (docs/OPERATIONS.md, shutdown_orchestrator)
hands what still names the node to the other worker; the node ends OFFLINE. At full scale
the worker is restarted and stopped again several times under a steady flow of runs.
"""

from __future__ import annotations

import os
import signal
import uuid

import pytest
from django.db.models import Count, Q

from orchestration.choices import EventType, NodeStatus
from orchestration.models import OrchestratorEvent, OrchestratorNode
from orchestration.queues import node_queue
from orchestration.tasks import execute_run
from runs import services as run_services
from runs.choices import RunMode, RunStatus
from runs.models import AgentRun
from tests.faults.figures import scenario
from tests.faults.harness import (
    ReaperLoop,
    active_runs,
    fleet_configure,
    statuses,
    wait_for,
    worker_env,
)
from tests.faults.scale import pick
from tests.orchestration.workers import WorkerProcess

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CYCLES = pick(ci=1, full=4)
RUNS_PER_CYCLE = pick(ci=30, full=100)
CONCURRENCY = 3
SLEEP_MS = 400
PENDING_TIMEOUT_S = 60


def submit(agent, count: int, *, node_id: str, queue: str) -> list[str]:
    """Every other run bound to the node's own queue, the rest on the shared queue."""
    ids = []
    for i in range(count):
        run = run_services.run_create(
            organization=agent.organization,
            agent=agent,
            intent="nap",
            input={"sleep_ms": SLEEP_MS},
            mode=RunMode.ASYNC,
        )
        target = queue
        if i % 2 == 0:
            AgentRun.objects.filter(pk=run.pk).update(node_id=node_id)
            target = node_queue(node_id)
        execute_run.apply_async(args=[str(run.pk)], queue=target)
        ids.append(str(run.pk))
    return ids


def test_f5_a_graceful_shutdown_with_runs_in_flight_loses_none(tenant_a, make_agent, queue):
    # The backlog legitimately waits longer than FAST_FLEET's pending timeout here; a longer
    # one keeps the reaper out unless the shutdown really left a run behind.
    fleet = fleet_configure(pending_timeout_s=PENDING_TIMEOUT_S)
    agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
    suffix = uuid.uuid4().hex[:8]
    env = worker_env(queue, fleet)
    staying = WorkerProcess(f"staying-{suffix}", queue, CONCURRENCY, env=env)
    leaving = WorkerProcess(f"leaving-{suffix}", queue, CONCURRENCY, env=env)
    reaper = ReaperLoop(interval_s=float(fleet["heartbeat_interval_s"]))
    run_ids: list[str] = []
    in_flight: set = set()
    exit_codes: list[int] = []
    offline_after: list[bool] = []
    with scenario("F5", "Graceful shutdown") as figures:
        try:
            staying.start()
            reaper.start()
            for _ in range(CYCLES):
                leaving.start()
                run_ids += submit(agent, RUNS_PER_CYCLE, node_id=leaving.name, queue=queue)
                mine = AgentRun.objects.filter(node_id=leaving.name, status=RunStatus.RUNNING)
                wait_for(
                    lambda mine=mine: mine.count() >= CONCURRENCY,
                    timeout=30,
                    what="the leaving worker to hold runs",
                )
                in_flight |= set(mine.values_list("pk", flat=True))
                os.kill(leaving.process.pid, signal.SIGTERM)
                exit_codes.append(leaving.process.wait(timeout=60))
                offline_after.append(
                    OrchestratorNode.objects.filter(
                        node_id=leaving.name, status=NodeStatus.OFFLINE
                    ).exists()
                )
            runs = AgentRun.objects.filter(pk__in=run_ids)
            wait_for(
                lambda: active_runs(runs) == 0,
                timeout=len(run_ids) * SLEEP_MS / 1000 / CONCURRENCY + 30,
                what="every run to end",
                interval=0.2,
            )
        finally:
            reaper.stop()
            leaving.stop()
            staying.stop()

        runs = AgentRun.objects.filter(pk__in=run_ids)
        completions = runs.annotate(
            attempts_rows=Count("metric_rows", filter=Q(metric_rows__name="attempts")),
            tools=Count("tool_executions", distinct=True),
        )
        flight = runs.filter(pk__in=in_flight)
        figures.update(
            {
                "shutdowns (SIGTERM)": CYCLES,
                "runs submitted": len(run_ids),
                "runs in flight at SIGTERM": len(in_flight),
                "in-flight runs finished by the stopping worker": flight.filter(
                    node_id=leaving.name, status=RunStatus.SUCCESS, attempt=1
                ).count(),
                "runs handed over by the shutdown service": sum(
                    event.payload.get("reassignedRuns", 0)
                    for event in OrchestratorEvent.objects.filter(
                        type=EventType.NODE_FAILOVER, node_id=leaving.name
                    )
                ),
                "runs finished by the other worker": runs.filter(node_id=staying.name).count(),
                "worker exit codes": sorted(set(exit_codes)),
                "node OFFLINE after each shutdown": all(offline_after),
                "runs lost (not terminal)": active_runs(runs),
                "final statuses": statuses(runs),
                "runs with more than one recorded completion": completions.filter(
                    Q(attempts_rows__gt=1) | Q(tools__gt=1)
                ).count(),
                "RUNNING runs re-queued after their lease expired": reaper.requeued_running,
                "PENDING runs re-enqueued after the pending timeout": reaper.requeued_pending,
            }
        )
        assert not reaper.errors, reaper.errors[:3]
        assert exit_codes == [0] * CYCLES
        assert all(offline_after)
        assert figures["runs lost (not terminal)"] == 0
        assert figures["final statuses"] == {RunStatus.SUCCESS: len(run_ids)}
        assert figures["in-flight runs finished by the stopping worker"] == len(in_flight)
        assert figures["runs with more than one recorded completion"] == 0
