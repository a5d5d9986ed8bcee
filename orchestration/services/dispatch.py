"""Handing a PENDING run to the Celery workers."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction

from orchestration.services.config import agent_policy_live
from orchestration.services.resolution import (
    agent_effective_config,
)
from orchestration.tasks import execute_run
from runs.models import AgentRun


def run_enqueue(run: AgentRun, *, total_timeout_s: float | None = None) -> None:
    """Dispatch after the PENDING row is committed, never before (the worker must find it).

    The Celery soft time limit is a backstop behind the run's own deadline, so a handler
    stuck in C code cannot hold a worker process forever.
    """
    if total_timeout_s is None:
        total_timeout_s = agent_policy_live(agent_effective_config(run.agent)).total_timeout_s
    run_id = str(run.pk)
    options = {
        "queue": settings.RUN_DEFAULT_QUEUE,
        "soft_time_limit": total_timeout_s + 10,
        "time_limit": total_timeout_s + 30,
    }
    transaction.on_commit(lambda: execute_run.apply_async(args=[run_id], **options))
