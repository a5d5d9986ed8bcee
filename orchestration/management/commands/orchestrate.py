"""Run an agent from the command line through the same orchestrate() as POST /api/orchestrate."""

from __future__ import annotations

import getpass
import json

from django.core.management.base import BaseCommand, CommandError

from agents.choices import ROLE_SCOPES, MemberRole
from agents.models import Organization
from agents.principal import Principal
from orchestration.services.orchestrator import OrchestrateCommand, orchestrate
from runs.choices import RunMode
from runs.models import AgentRun


def _cli_principal_key() -> str:
    # The rate limit and the run's meta need one stable identity per operator; the OS
    # account is the closest thing a shell has. getpass fails without a passwd entry
    # (some containers), and the CLI must still work there.
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


class Command(BaseCommand):
    help = (
        "Orchestrate one request for an organization, as the API would, and print the "
        "response envelope as JSON. Exits non-zero when the envelope says success false."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--org", required=True, help="Slug of the organization.")
        parser.add_argument("--intent", required=True, help="The intent to serve.")
        parser.add_argument(
            "--agent", help="Name or slug of the agent (default: the one serving the intent)."
        )
        parser.add_argument(
            "--payload", default=None, metavar="JSON", help="The request payload, as JSON."
        )
        parser.add_argument(
            "--async",
            dest="run_async",
            action="store_true",
            help="Enqueue the run for a worker and print the accepted envelope.",
        )
        parser.add_argument("--objective", default="", help="Free-text objective of the run.")
        parser.add_argument("--dataset", metavar="ID_OR_SLUG", help="A dataset of the org.")
        parser.add_argument(
            "--idempotency-key",
            metavar="KEY",
            help="Same key and request returns the same run instead of running again.",
        )

    def handle(self, *args, **options) -> None:
        slug = options["org"]
        organization = Organization.objects.filter(slug=slug).first()
        if organization is None:
            known = ", ".join(Organization.objects.values_list("slug", flat=True)[:20]) or "none"
            raise CommandError(f"Unknown organization {slug!r} (known: {known}).")

        payload = None
        if options["payload"] is not None:
            try:
                payload = json.loads(options["payload"])
            except json.JSONDecodeError as exc:
                raise CommandError(f"--payload is not valid JSON: {exc}") from exc

        key = options["idempotency_key"] or None
        key_max = AgentRun._meta.get_field("idempotency_key").max_length
        if key is not None and len(key) > key_max:
            raise CommandError(f"--idempotency-key is longer than {key_max} characters.")

        # Whoever can run manage.py already holds the database: acting as an owner of the
        # organization grants nothing they do not have.
        principal = Principal(
            organization=organization,
            scopes=ROLE_SCOPES[MemberRole.OWNER],
            role=MemberRole.OWNER,
            principal_key=_cli_principal_key(),
        )
        command = OrchestrateCommand(
            intent=options["intent"],
            agent=options["agent"] or None,
            payload=payload,
            mode=RunMode.ASYNC if options["run_async"] else RunMode.SYNC,
            dataset_id=options["dataset"] or None,
            objective=options["objective"] or "",
            idempotency_key=key,
        )
        result = orchestrate(command, principal)
        self.stdout.write(json.dumps(result.body, indent=2, ensure_ascii=False, default=str))
        if not result.body.get("success"):
            error = result.body.get("error") or {}
            raise CommandError(
                f"{error.get('code', 'FAILED')}: {error.get('message', 'the run failed')}"
                f" (HTTP {result.http_status})"
            )
