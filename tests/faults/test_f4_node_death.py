"""F4 Node death: a worker node stops heartbeating (its processes frozen with SIGSTOP)
while it holds runs. The expiry sweep marks it UNHEALTHY, then FAILED, and fails it over:
its RUNNING and PENDING runs go to the surviving node and complete there. When the frozen
node wakes up (SIGCONT) its late results are fenced off and discarded.
"""

from __future__ import annotations

import os
import signal
import time
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
from tests.faults.harness import ReaperLoop, active_runs, statuses, wait_for, worker_env
from tests.faults.scale import pick
from tests.orchestration.workers import WorkerProcess

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

RUNS = pick(ci=8, full=60)
VICTIM_CONCURRENCY = pick(ci=2, full=4)
SURVIVOR_CONCURRENCY = 4
SLEEP_MS = 1500


def bound_to(node_id: str, agent, count: int) -> list[str]:
    """Runs routed to one node's own queue, as run_enqueue does for a node-bound route."""
    ids = []
    for _ in range(count):
        run = run_services.run_create(
            organization=agent.organization,
            agent=agent,
            intent="nap",
            input={"sleep_ms": SLEEP_MS},
            mode=RunMode.ASYNC,
        )
        AgentRun.objects.filter(pk=run.pk).update(node_id=node_id)
        execute_run.apply_async(args=[str(run.pk)], queue=node_queue(node_id))
        ids.append(str(run.pk))
    return ids


def test_f4_a_dead_nodes_runs_are_failed_over_and_complete(tenant_a, make_agent, queue, fleet):
    interval = float(fleet["heartbeat_interval_s"])
    agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
    suffix = uuid.uuid4().hex[:8]
    env = worker_env(queue, fleet)
    survivor = WorkerProcess(f"alive-{suffix}", queue, SURVIVOR_CONCURRENCY, env=env)
    victim = WorkerProcess(f"dying-{suffix}", queue, VICTIM_CONCURRENCY, env=env)
    reaper = ReaperLoop(interval_s=interval)
    frozen = False
    with scenario("F4", "Node death") as figures:
        try:
            survivor.start()
            victim.start()
            reaper.start()
            run_ids = bound_to(victim.name, agent, RUNS)
            runs = AgentRun.objects.filter(pk__in=run_ids)
            running = runs.filter(node_id=victim.name, status=RunStatus.RUNNING)
            wait_for(
                lambda: running.count() >= VICTIM_CONCURRENCY,
                timeout=30,
                what="the victim to hold runs",
            )
            os.killpg(victim.process.pid, signal.SIGSTOP)
            frozen = True
            died = time.monotonic()
            in_flight = set(running.values_list("pk", flat=True))
            pending = runs.filter(status=RunStatus.PENDING).count()

            wait_for(
                lambda: OrchestratorNode.objects.filter(
                    node_id=victim.name, status=NodeStatus.FAILED
                ).exists(),
                timeout=interval * float(fleet["failed_after_intervals"]) + 20,
                what="the sweep to fail the silent node",
                interval=0.1,
            )
            failed_over_after = time.monotonic() - died
            budget = RUNS * SLEEP_MS / 1000 / SURVIVOR_CONCURRENCY + 30
            wait_for(lambda: active_runs(runs) == 0, timeout=budget, what="every run to end")
            still_running = runs.filter(status=RunStatus.RUNNING).count()

            # The frozen node wakes up: what it was executing ends on an old attempt.
            os.killpg(victim.process.pid, signal.SIGCONT)
            frozen = False
            stale = OrchestratorEvent.objects.filter(
                type=EventType.RUN_STALE_COMPLETION, run__in=run_ids
            )
            wait_for(
                lambda: stale.count() >= len(in_flight),
                timeout=30,
                what="the woken node's late results",
                interval=0.2,
            )
        finally:
            reaper.stop()
            if frozen:
                os.killpg(victim.process.pid, signal.SIGCONT)
            victim.stop()
            survivor.stop()

        completions = runs.annotate(
            attempts_rows=Count("metric_rows", filter=Q(metric_rows__name="attempts")),
            tools=Count("tool_executions", distinct=True),
        )
        failover = OrchestratorEvent.objects.filter(
            type=EventType.NODE_FAILOVER, node_id=victim.name
        ).first()
        figures.update(
            {
                "runs bound to the node": RUNS,
                "runs in flight when it died": len(in_flight),
                "runs waiting for it": pending,
                "failed over after (s)": round(failed_over_after, 1),
                "runs reassigned by the failover": failover.payload["reassignedRuns"]
                if failover
                else 0,
                "runs RUNNING at the end": still_running,
                "final statuses": statuses(runs),
                "in-flight runs completed on the survivor": runs.filter(
                    pk__in=in_flight, node_id=survivor.name, status=RunStatus.SUCCESS
                ).count(),
                "late results of the dead node discarded": stale.count(),
                "runs with more than one recorded completion": completions.filter(
                    Q(attempts_rows__gt=1) | Q(tools__gt=1)
                ).count(),
            }
        )
        assert not reaper.errors, reaper.errors[:3]
        assert len(in_flight) == VICTIM_CONCURRENCY
        assert failover is not None and failover.payload["backupNode"] == survivor.name
        assert still_running == 0
        assert figures["final statuses"] == {RunStatus.SUCCESS: RUNS}
        assert figures["in-flight runs completed on the survivor"] == len(in_flight)
        assert figures["runs with more than one recorded completion"] == 0
        for run in runs.filter(pk__in=in_flight):
            assert run.attempt == 2  # the dead node's attempt, then the survivor's
