"""The legacy agent_jobs table turned into agent_runs, once per job.

Idempotency rests on the job id kept in the run's meta ("legacyJobId"): a job with a
run carrying its id is never migrated again, so the command can be re-run after
fixing what it reported (a missing agent, an unknown status).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection, transaction

from agents.models import Agent, Organization
from runs.choices import TERMINAL_RUN_STATES, LegacyJobStatus, RunStatus
from runs.models import AgentJob, AgentRun
from runs.services import input_hash

BATCH_SIZE = 500
LEGACY_INTENT = "legacy"
LEGACY_MODE = "legacy"
LEGACY_ERROR_CODE = "LEGACY_FAILED"
# Any constant shared by every caller of agent_jobs_migrate(); see the lock below.
_MIGRATION_LOCK_ID = 0x4A0B_5E5


@dataclass
class LegacyMigrationReport:
    dry_run: bool = False
    created: int = 0
    already_migrated: int = 0
    skipped_unknown_status: list[tuple[str, str]] = field(default_factory=list)
    skipped_no_agent: list[tuple[str, str]] = field(default_factory=list)
    skipped_no_organization: list[str] = field(default_factory=list)
    # Run status -> runs created (or that would be, in a dry run).
    by_status: dict[str, int] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        return (
            len(self.skipped_unknown_status)
            + len(self.skipped_no_agent)
            + len(self.skipped_no_organization)
        )


def _agent_index(organization_ids: set) -> dict[tuple[Any, str], Agent]:
    """(organization id, name or slug) -> agent; exact keys first, then casefolded ones."""
    exact: dict[tuple[Any, str], Agent] = {}
    folded: dict[tuple[Any, str], Agent] = {}
    for agent in Agent.objects.filter(organization_id__in=organization_ids):
        for ref in (agent.name, agent.slug):
            exact.setdefault((agent.organization_id, ref), agent)
            folded.setdefault((agent.organization_id, ref.casefold()), agent)
    return {**folded, **exact}


def _agent_for(index: dict, job: AgentJob) -> Agent | None:
    name = (job.agent_name or "").strip()
    return index.get((job.organization_id, name)) or index.get(
        (job.organization_id, name.casefold())
    )


def _run_from_job(job: AgentJob, agent: Agent, status: str) -> AgentRun:
    data = job.input
    intent = LEGACY_INTENT
    if isinstance(data, dict) and isinstance(data.get("intent"), str) and data["intent"].strip():
        intent = data["intent"].strip()[:120]
    # The legacy table only knows when a job was created and last touched: the first is
    # when it was queued (and, lacking anything better, started); the last is when it
    # ended, but only if it did end.
    terminal = status in TERMINAL_RUN_STATES
    started_at = job.created_at if status != RunStatus.PENDING else None
    completed_at: datetime | None = job.updated_at if terminal else None
    metrics = job.metrics or {}
    if not isinstance(metrics, dict):
        # Run metrics are an object everywhere they are read; keep odd legacy values whole.
        metrics = {"legacy": metrics}
    # duration_ms feeds latency figures: only a measured duration goes there, not
    # updated_at - created_at, which includes queueing and any later edit of the row.
    measured = metrics.get("durationMs")
    is_number = isinstance(measured, int | float) and not isinstance(measured, bool)
    duration_ms = int(measured) if terminal and is_number and measured >= 0 else None
    failed = status == RunStatus.FAILED
    return AgentRun(
        organization_id=job.organization_id,
        agent=agent,
        status=status,
        intent=intent,
        input=job.input,
        output=job.output,
        metrics=metrics,
        meta={"legacyJobId": str(job.pk), "mode": LEGACY_MODE, "createdBy": job.created_by},
        input_hash=input_hash(job.input),
        error_code=LEGACY_ERROR_CODE if failed else "",
        error_message=job.error or "",
        # Never claimed by this system; 1 marks "ran once" for anything past PENDING so a
        # legacy row looks like a native run that went through run_claim().
        attempt=0 if status == RunStatus.PENDING else 1,
        queued_at=job.created_at,
        started_at=started_at,
        completed_at=completed_at,
        duration_ms=duration_ms,
        created_at=job.created_at,
        updated_at=job.updated_at,
    )


def _runs_insert(runs: list[AgentRun]) -> None:
    # bulk_create stamps created_at/updated_at with now (auto_now_add / auto_now run on
    # insert); a migrated run must keep the job's dates so it sorts where it happened.
    dates = [(run.created_at, run.updated_at) for run in runs]
    AgentRun.objects.bulk_create(runs)
    for run, (created_at, updated_at) in zip(runs, dates, strict=True):
        run.created_at, run.updated_at = created_at, updated_at
    # bulk_update writes the values as given (auto_now does not apply to it).
    AgentRun.objects.bulk_update(runs, ["created_at", "updated_at"])


def agent_jobs_migrate(
    *, organization: Organization | None = None, dry_run: bool = False
) -> LegacyMigrationReport:
    """Create one AgentRun per not-yet-migrated AgentJob; report what cannot be migrated."""
    report = LegacyMigrationReport(dry_run=dry_run)
    by_status: Counter[str] = Counter()

    jobs = AgentJob.objects.order_by("created_at", "id")
    if organization is not None:
        jobs = jobs.filter(organization=organization)

    with transaction.atomic():
        if not dry_run and connection.vendor == "postgresql":
            # Two migrations at once would both read "not migrated yet" and both insert:
            # the second waits here until the first commits, then sees its runs.
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_MIGRATION_LOCK_ID])

        organization_ids = (
            {organization.pk}
            if organization is not None
            else set(
                jobs.exclude(organization__isnull=True)
                .order_by()
                .values_list("organization_id", flat=True)
                .distinct()
            )
        )
        migrated = set(
            AgentRun.objects.filter(
                organization_id__in=organization_ids, meta__has_key="legacyJobId"
            ).values_list("meta__legacyJobId", flat=True)
        )
        agents = _agent_index(organization_ids)

        batch: list[AgentRun] = []
        for job in jobs.iterator(chunk_size=BATCH_SIZE):
            job_id = str(job.pk)
            if job_id in migrated:
                report.already_migrated += 1
                continue
            if job.organization_id is None:
                report.skipped_no_organization.append(job_id)
                continue
            status = LegacyJobStatus.TO_RUN_STATUS.get((job.status or "").strip().lower())
            if status is None:
                report.skipped_unknown_status.append((job_id, job.status))
                continue
            agent = _agent_for(agents, job)
            if agent is None:
                report.skipped_no_agent.append((job_id, job.agent_name))
                continue
            by_status[status] += 1
            report.created += 1
            if dry_run:
                continue
            batch.append(_run_from_job(job, agent, status))
            if len(batch) >= BATCH_SIZE:
                _runs_insert(batch)
                batch = []
        if batch:
            _runs_insert(batch)

    report.by_status = dict(by_status)
    return report
