"""Delete events older than the retention period, in batches (beat does it hourly too)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from orchestration.bus.retention import DEFAULT_BATCH, events_prune, retention_days_live


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


class Command(BaseCommand):
    help = (
        "Delete orchestrator events older than the retention period (the live configuration's"
        " events.retention_days unless --days is given), in batches of --batch rows."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--days",
            type=_positive,
            default=None,
            help="Keep this many days (default: events.retention_days of the live config).",
        )
        parser.add_argument(
            "--batch",
            type=_positive,
            default=DEFAULT_BATCH,
            help=f"Rows per DELETE statement (default {DEFAULT_BATCH}).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be deleted; delete nothing."
        )

    def handle(self, *args, days=None, batch=DEFAULT_BATCH, dry_run=False, **options) -> None:
        if days is None:
            days = retention_days_live()
        try:
            result = events_prune(
                days=days,
                batch_size=batch,
                dry_run=dry_run,
                on_batch=lambda number, count: self.stdout.write(
                    f"batch {number}: {count} event(s) deleted"
                ),
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        cutoff = result.cutoff.isoformat(timespec="seconds")
        if result.dry_run:
            self.stdout.write(
                self.style.SUCCESS(
                    f"dry run: {result.deleted} event(s) older than {days} day(s)"
                    f" (before {cutoff}) would be deleted"
                )
            )
            return
        self.stdout.write(
            self.style.SUCCESS(
                f"prune_events: {result.deleted} event(s) older than {days} day(s)"
                f" (before {cutoff}) deleted in {result.batches} batch(es)"
            )
        )
