"""Turn legacy agent_jobs rows into agent_runs; safe to run again (already migrated jobs stay)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from agents.models import Organization
from runs.choices import LegacyJobStatus
from runs.legacy import agent_jobs_migrate


class Command(BaseCommand):
    help = (
        "Convert legacy agent_jobs into agent_runs (statuses "
        f"{', '.join(LegacyJobStatus.TO_RUN_STATUS)}); jobs already converted are left alone, "
        "jobs with an unknown status or agent are reported and not converted."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Report what would be converted without writing anything.",
        )
        parser.add_argument("--org", help="Only the jobs of this organization (slug).")

    def handle(self, *args, **options) -> None:
        organization = None
        slug = options["org"]
        if slug:
            organization = Organization.objects.filter(slug=slug).first()
            if organization is None:
                known = (
                    ", ".join(Organization.objects.values_list("slug", flat=True)[:20]) or "none"
                )
                raise CommandError(f"Unknown organization {slug!r} (known: {known}).")

        dry_run = options["dry_run"]
        report = agent_jobs_migrate(organization=organization, dry_run=dry_run)

        write = self.stdout.write
        for job_id, status in report.skipped_unknown_status:
            write(f"job {job_id}: unknown status {status!r}, not migrated")
        for job_id, agent_name in report.skipped_no_agent:
            write(f"job {job_id}: no agent {agent_name!r} in its organization, not migrated")
        for job_id in report.skipped_no_organization:
            write(f"job {job_id}: no organization, not migrated")

        verb = "would create" if dry_run else "created"
        statuses = ", ".join(f"{s} {n}" for s, n in sorted(report.by_status.items())) or "none"
        lines = [
            f"{'Dry run: nothing written. ' if dry_run else ''}Runs {verb}: {report.created}"
            f" ({statuses})",
            f"Already migrated: {report.already_migrated}",
            f"Skipped, unknown status: {len(report.skipped_unknown_status)}",
            f"Skipped, agent not found: {len(report.skipped_no_agent)}",
            f"Skipped, no organization: {len(report.skipped_no_organization)}",
        ]
        write("\n".join(lines))
