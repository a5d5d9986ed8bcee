"""F6 Poison run: a handler that kills its worker process every time.

The run is claimed, its pool process dies, Celery re-delivers the message
(acks_late + reject_on_worker_lost) and the delivery finds the run RUNNING, so it does
nothing. The run's lease is not extended (the worker's heartbeat only covers what its pool
is executing), so the reaper takes it back after lease_s: PENDING again, attempt + 1 on
the next claim. On the last allowed attempt the reaper ends it FAILED NODE_LOST. The
worker keeps serving other runs all along.
"""

from __future__ import annotations

import time
import uuid

import pytest

from orchestration.services.dispatch import run_enqueue
from orchestration.services.reaper import NODE_LOST
from runs import services as run_services
from runs.choices import TERMINAL_RUN_STATES, RunMode, RunStatus
from runs.models import AgentRun
from tests.faults.figures import scenario
from tests.faults.harness import ReaperLoop, statuses, wait_for, worker_env
from tests.faults.scale import pick
from tests.orchestration.workers import WorkerProcess

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

POISON_RUNS = pick(ci=1, full=5)
HEALTHY_RUNS = pick(ci=10, full=100)


def executions(marker) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def submit(agent, intent: str, payload: dict) -> AgentRun:
    run = run_services.run_create(
        organization=agent.organization,
        agent=agent,
        intent=intent,
        input=payload,
        mode=RunMode.ASYNC,
    )
    run_enqueue(run)
    return run


def test_f6_a_poison_run_ends_failed_after_its_maximum_attempts(
    tenant_a, make_agent, queue, fleet, tmp_path
):
    max_attempts = int(fleet["max_attempts"])
    lease_s = float(fleet["lease_s"])
    poison = make_agent("Poison", "test-poison", intents=["poison"])
    healthy = make_agent("Sleeper", "test-sleep", intents=["nap"])
    worker = WorkerProcess(
        f"poisoned-{uuid.uuid4().hex[:8]}", queue, concurrency=2, env=worker_env(queue, fleet)
    )
    reaper = ReaperLoop(interval_s=float(fleet["heartbeat_interval_s"]))
    with scenario("F6", "Poison run") as figures:
        try:
            worker.start()
            reaper.start()
            markers = [tmp_path / f"poison-{i}.log" for i in range(POISON_RUNS)]
            poisoned = [submit(poison, "poison", {"marker": str(marker)}) for marker in markers]
            others = [submit(healthy, "nap", {"sleep_ms": 20}) for _ in range(HEALTHY_RUNS)]
            all_runs = AgentRun.objects.filter(pk__in=[r.pk for r in poisoned + others])

            # Each attempt costs at most a lease plus a reaper cycle plus a pool restart.
            budget = max_attempts * (lease_s + 2 * reaper.interval_s + 5) + 20
            wait_for(
                lambda: not all_runs.exclude(status__in=TERMINAL_RUN_STATES).exists(),
                timeout=budget,
                what="every run to end",
                interval=0.2,
            )
            ended_at = [executions(m) for m in markers]
            # No endless redelivery: nothing executes the poison again once it has ended.
            time.sleep(2 * lease_s + 2 * reaper.interval_s)
            later = [executions(m) for m in markers]
            worker_alive = worker.process.poll() is None
        finally:
            reaper.stop()
            worker.stop()

        ended = list(AgentRun.objects.filter(pk__in=[r.pk for r in poisoned]))
        figures.update(
            {
                "max attempts": max_attempts,
                "poison runs": POISON_RUNS,
                "pool processes killed (handler executions)": sum(ended_at),
                "executions per poison run": sorted(set(ended_at)),
                "final status": statuses(AgentRun.objects.filter(pk__in=[r.pk for r in ended])),
                "error codes": sorted({r.error_code for r in ended}),
                "attempts recorded": sorted({r.attempt for r in ended}),
                "executions after the run ended": sum(later) - sum(ended_at),
                "healthy runs succeeded alongside": AgentRun.objects.filter(
                    pk__in=[r.pk for r in others], status=RunStatus.SUCCESS
                ).count(),
                "worker main process survived": worker_alive,
                "reaper cycles": reaper.cycles,
            }
        )
        assert not reaper.errors, reaper.errors
        for run, count in zip(ended, ended_at, strict=True):
            assert run.status == RunStatus.FAILED, (run.pk, run.status)
            assert run.error_code == NODE_LOST
            assert run.attempt == max_attempts
            assert count == max_attempts, (run.pk, count)
        assert later == ended_at
        assert worker_alive
        assert figures["healthy runs succeeded alongside"] == HEALTHY_RUNS
