from __future__ import annotations

from django.db import models


class RunStatus(models.TextChoices):
    PENDING = "PENDING", "Pending"
    RUNNING = "RUNNING", "Running"
    SUCCESS = "SUCCESS", "Success"
    FAILED = "FAILED", "Failed"
    CANCELLED = "CANCELLED", "Cancelled"


ACTIVE_RUN_STATES = frozenset({RunStatus.PENDING, RunStatus.RUNNING})
TERMINAL_RUN_STATES = frozenset({RunStatus.SUCCESS, RunStatus.FAILED, RunStatus.CANCELLED})

# The only legal moves of a run. A terminal run never changes status again.
RUN_TRANSITIONS: dict[str, frozenset[str]] = {
    RunStatus.PENDING: frozenset({RunStatus.RUNNING, RunStatus.FAILED, RunStatus.CANCELLED}),
    # RUNNING -> PENDING is a re-queue after its node was lost (a new attempt follows).
    RunStatus.RUNNING: frozenset(
        {RunStatus.SUCCESS, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.PENDING}
    ),
    RunStatus.SUCCESS: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.CANCELLED: frozenset(),
}


class RunMode(models.TextChoices):
    SYNC = "sync", "Synchronous"
    ASYNC = "async", "Asynchronous"


class ToolExecutionStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCESS = "success", "Success"
    FAILED = "failed", "Failed"


class StepStatus(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCESS = "success", "Success"
    FAILED = "failed", "Failed"
    SKIPPED = "skipped", "Skipped"


class LegacyJobStatus:
    """Legacy agent_jobs statuses and the run status each becomes."""

    TO_RUN_STATUS: dict[str, str] = {
        "queued": RunStatus.PENDING,
        "running": RunStatus.RUNNING,
        "completed": RunStatus.SUCCESS,
        "succeeded": RunStatus.SUCCESS,
        "failed": RunStatus.FAILED,
    }
