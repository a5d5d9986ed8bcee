"""migrate_agent_jobs: legacy agent_jobs rows become agent_runs, once each."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from runs.choices import RunStatus
from runs.legacy import agent_jobs_migrate
from runs.models import AgentJob, AgentRun
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db


def make_job(organization, status: str, agent_name: str = "ContentAgent", **fields) -> AgentJob:
    job = AgentJob.objects.create(
        organization=organization, agent_name=agent_name, status=status, **fields
    )
    # created_at is stamped on insert; legacy rows are old, which the migration must keep.
    created = timezone.now() - timedelta(days=30)
    AgentJob.objects.filter(pk=job.pk).update(
        created_at=created, updated_at=created + timedelta(seconds=4)
    )
    job.refresh_from_db()
    return job


def migrate(*args: str) -> str:
    out = StringIO()
    call_command("migrate_agent_jobs", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def content_agent(tenant_a):
    return AgentFactory(organization=tenant_a.organization, name="ContentAgent", slug="content")


class TestStatusMapping:
    @pytest.mark.parametrize(
        ("legacy", "expected"),
        [
            ("queued", RunStatus.PENDING),
            ("running", RunStatus.RUNNING),
            ("completed", RunStatus.SUCCESS),
            ("succeeded", RunStatus.SUCCESS),
            ("failed", RunStatus.FAILED),
            ("Completed", RunStatus.SUCCESS),  # legacy casing varies
        ],
    )
    def test_each_legacy_status_maps_to_a_run_status(
        self, tenant_a, content_agent, legacy, expected
    ):
        job = make_job(tenant_a.organization, legacy, input={"text": "hi"})
        report = agent_jobs_migrate()
        assert (report.created, report.by_status) == (1, {expected: 1})
        run = AgentRun.objects.get()
        assert run.status == expected
        assert run.meta["legacyJobId"] == str(job.pk)
        assert run.created_at == job.created_at
        terminal = expected in {RunStatus.SUCCESS, RunStatus.FAILED}
        assert (run.completed_at == job.updated_at) is terminal
        assert (run.started_at is None) is (expected == RunStatus.PENDING)

    def test_unknown_status_is_reported_not_migrated(self, tenant_a, content_agent):
        job = make_job(tenant_a.organization, "exploded")
        output = migrate()
        assert not AgentRun.objects.exists()
        assert f"job {job.pk}: unknown status 'exploded'" in output
        assert "Skipped, unknown status: 1" in output
        assert agent_jobs_migrate().skipped_unknown_status == [(str(job.pk), "exploded")]


class TestRunContents:
    def test_completed_job_keeps_its_data(self, tenant_a, content_agent):
        job = make_job(
            tenant_a.organization,
            "completed",
            agent_name="content",  # the slug finds the agent too
            input={"intent": "summarize", "text": "long text"},
            output={"summary": "short"},
            metrics={"tokens": 12, "durationMs": 850},
            created_by="alice@example.com",
        )
        agent_jobs_migrate()
        run = AgentRun.objects.get()
        assert run.agent == content_agent
        assert run.organization == tenant_a.organization
        assert run.intent == "summarize"
        assert (run.input, run.output) == (job.input, job.output)
        assert run.metrics == {"tokens": 12, "durationMs": 850}
        assert run.duration_ms == 850
        assert len(run.input_hash) == 64
        assert run.meta == {
            "legacyJobId": str(job.pk),
            "mode": "legacy",
            "createdBy": "alice@example.com",
        }
        assert (run.error_code, run.error_message) == ("", "")

    def test_failed_job_keeps_its_error_and_has_the_legacy_intent(self, tenant_a, content_agent):
        make_job(tenant_a.organization, "failed", input=["not", "a", "dict"], error="boom")
        agent_jobs_migrate()
        run = AgentRun.objects.get()
        assert run.intent == "legacy"
        assert (run.error_code, run.error_message) == ("LEGACY_FAILED", "boom")
        assert run.metrics == {}


class TestReported:
    def test_missing_agent_is_reported_not_migrated(self, tenant_a, tenant_b):
        # The agent exists, but in another organization: it must not be borrowed.
        AgentFactory(organization=tenant_b.organization, name="ContentAgent")
        job = make_job(tenant_a.organization, "completed")
        output = migrate()
        assert not AgentRun.objects.exists()
        assert f"job {job.pk}: no agent 'ContentAgent' in its organization" in output
        assert "Skipped, agent not found: 1" in output

    def test_job_without_organization_is_reported(self, tenant_a, content_agent):
        job = make_job(None, "completed")
        report = agent_jobs_migrate()
        assert report.skipped_no_organization == [str(job.pk)]
        assert not AgentRun.objects.exists()


class TestIdempotencyAndScope:
    def test_running_twice_creates_nothing_new(self, tenant_a, content_agent):
        for status in ("queued", "completed", "failed", "exploded"):
            make_job(tenant_a.organization, status)
        first = migrate()
        assert "Runs created: 3" in first
        assert AgentRun.objects.count() == 3
        second = migrate()
        assert AgentRun.objects.count() == 3
        assert "Runs created: 0 (none)" in second
        assert "Already migrated: 3" in second
        assert "Skipped, unknown status: 1" in second  # still reported, still not migrated

    def test_a_job_added_later_is_migrated_alone(self, tenant_a, content_agent):
        make_job(tenant_a.organization, "completed")
        agent_jobs_migrate()
        make_job(tenant_a.organization, "running")
        report = agent_jobs_migrate()
        assert (report.created, report.already_migrated) == (1, 1)
        assert AgentRun.objects.count() == 2

    def test_dry_run_writes_nothing_and_reports_the_same_counts(self, tenant_a, content_agent):
        for status in ("queued", "running", "completed", "succeeded", "failed", "exploded"):
            make_job(tenant_a.organization, status)
        make_job(tenant_a.organization, "completed", agent_name="Ghost")

        dry = agent_jobs_migrate(dry_run=True)
        assert not AgentRun.objects.exists()
        output = migrate("--dry-run")
        assert not AgentRun.objects.exists()
        assert "Dry run: nothing written. Runs would create: 5" in output

        real = agent_jobs_migrate()
        assert AgentRun.objects.count() == 5
        for name in ("created", "already_migrated", "by_status"):
            assert getattr(dry, name) == getattr(real, name)
        assert sorted(dry.skipped_unknown_status) == sorted(real.skipped_unknown_status)
        assert sorted(dry.skipped_no_agent) == sorted(real.skipped_no_agent)
        assert dry.by_status == {
            RunStatus.PENDING: 1,
            RunStatus.RUNNING: 1,
            RunStatus.SUCCESS: 2,
            RunStatus.FAILED: 1,
        }

    def test_org_option_limits_the_migration_to_one_organization(
        self, tenant_a, tenant_b, content_agent
    ):
        AgentFactory(organization=tenant_b.organization, name="ContentAgent", slug="content")
        job_a = make_job(tenant_a.organization, "completed")
        make_job(tenant_b.organization, "completed")
        make_job(None, "completed")

        output = migrate("--org", "org-a")
        assert "Runs created: 1" in output
        assert "Skipped, no organization: 0" in output  # other jobs are not looked at
        run = AgentRun.objects.get()
        assert run.organization == tenant_a.organization
        assert run.meta["legacyJobId"] == str(job_a.pk)

        migrate("--org", "org-b")
        assert AgentRun.objects.filter(organization=tenant_b.organization).count() == 1
        assert AgentRun.objects.count() == 2

    def test_unknown_org_is_a_command_error(self, tenant_a):
        with pytest.raises(CommandError, match="Unknown organization 'nope'"):
            migrate("--org", "nope")
