"""Issue an API key for an organization; the key is printed once, as the last line."""

from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from agents.choices import DEFAULT_API_KEY_SCOPES, Scope
from agents.models import Organization
from agents.services import InvalidScopes, api_key_create


class Command(BaseCommand):
    help = (
        "Create an API key for an organization. The raw key is shown once, as the last line "
        "of the output; only its hash is stored."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--org", required=True, help="Slug of the organization.")
        parser.add_argument("--name", required=True, help="A name that says what the key is for.")
        parser.add_argument(
            "--scopes",
            nargs="+",
            metavar="SCOPE",
            help=(
                f"Scopes (space or comma separated) among: {', '.join(Scope.values)}. "
                f"Default: {' '.join(DEFAULT_API_KEY_SCOPES)}."
            ),
        )
        parser.add_argument(
            "--expires-in-days",
            type=int,
            metavar="N",
            help="Expire the key after N days (default: never).",
        )

    def handle(self, *args, **options) -> None:
        slug = options["org"]
        organization = Organization.objects.filter(slug=slug).first()
        if organization is None:
            known = ", ".join(Organization.objects.values_list("slug", flat=True)[:20]) or "none"
            raise CommandError(f"Unknown organization {slug!r} (known: {known}).")

        name = options["name"].strip()
        if not name:
            raise CommandError("--name must not be empty.")

        scopes = None
        if options["scopes"]:
            scopes = [s for item in options["scopes"] for s in item.split(",") if s.strip()]
            scopes = [s.strip() for s in scopes]
            if not scopes:
                raise CommandError(f"--scopes needs at least one of: {', '.join(Scope.values)}.")

        expires_at = None
        days = options["expires_in_days"]
        if days is not None:
            if days <= 0:
                raise CommandError("--expires-in-days must be a positive number of days.")
            expires_at = timezone.now() + timedelta(days=days)

        try:
            issued = api_key_create(
                organization=organization, name=name, scopes=scopes, expires_at=expires_at
            )
        except InvalidScopes as exc:
            raise CommandError(str(exc)) from exc

        key = issued.api_key
        expiry = key.expires_at.isoformat() if key.expires_at else "never"
        self.stdout.write(
            f"Created API key {key.name!r} for organization {organization.slug!r}: "
            f"prefix {key.prefix}, scopes {' '.join(key.scopes) or '(none)'}, expires {expiry}. "
            "The key is shown only now; store it safely:"
        )
        self.stdout.write(issued.raw_key)
