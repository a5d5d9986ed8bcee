"""Make this node ready: check the services, seed, announce the agents, register the node."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from agents.demo import DEMO_API_KEY_NAME, DEMO_ORGANIZATION_SLUG
from orchestration.services.lifecycle import (
    BootstrapError,
    BootstrapResult,
    orchestrator_bootstrap,
)

BASE_URL = "http://127.0.0.1:8000"


def summary_table(rows: list[tuple[str, str, str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(
        f"  {name:<{widths[0]}}  {result:<{widths[1]}}  {detail}".rstrip()
        for name, result, detail in rows
    )


class Command(BaseCommand):
    help = (
        "Check the database, Redis and the broker; sync the code-declared agent definitions"
        " into the organizations; announce their ACTIVE agents on the bus (agent.registered);"
        " read the circuits from the policy store; register this node. With --demo, create"
        " the demo organization, admin, API key and dataset first. Idempotent: a second run"
        " changes nothing and says so. Exits non-zero when the database is unreachable."
    )

    def add_arguments(self, parser) -> None:
        which = parser.add_mutually_exclusive_group()
        which.add_argument(
            "--org", action="append", default=[], metavar="SLUG", help="an organization"
        )
        which.add_argument("--all", action="store_true", help="every organization")
        parser.add_argument(
            "--demo", action="store_true", help="create the demo data (and include its org)"
        )
        parser.add_argument(
            "--node",
            default=None,
            help="node id (default: ORCHESTRATOR_NODE_ID when set, else the host name)",
        )
        parser.add_argument("--region", default=None, help="default: ORCHESTRATOR_REGION")

    def handle(self, *args, **options) -> None:
        try:
            result = orchestrator_bootstrap(
                organization_slugs=options["org"],
                all_organizations=options["all"],
                demo=options["demo"],
                node_id=options["node"],
                region=options["region"],
                stdout=self.stdout,
            )
        except BootstrapError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"\nBootstrap of node {result.node_id}")
        rows = [("CHECK", "RESULT", "DETAIL")]
        rows += [(step.name, step.result, step.detail) for step in result.steps]
        self.stdout.write(summary_table(rows))
        if not result.database_up:
            raise CommandError("the database is unreachable: nothing was bootstrapped")
        if result.demo is not None:
            self.stdout.write(self._demo_credentials(result))
        changes = result.changes
        if changes:
            names = ", ".join(step.name for step in changes)
            self.stdout.write(self.style.SUCCESS(f"Bootstrapped: changed {names}."))
        else:
            self.stdout.write(
                self.style.SUCCESS("Nothing changed: the orchestrator was already bootstrapped.")
            )

    @staticmethod
    def _demo_credentials(result: BootstrapResult) -> str:
        demo = result.demo
        password = demo["password"] or (
            f"(already created; reset with `python manage.py changepassword {demo['username']}`)"
        )
        api_key = demo["api_key"] or (
            f"(a key named {DEMO_API_KEY_NAME!r} already exists; create another with "
            f"`python manage.py create_api_key --org {DEMO_ORGANIZATION_SLUG} --name <name>`)"
        )
        return "\n".join(
            [
                "",
                f"Organization: {demo['organization'].slug}",
                f"Admin:        {BASE_URL}/admin/",
                f"  username:   {demo['username']}",
                f"  password:   {password}",
                f"API key:      {api_key}",
                f"API docs:     {BASE_URL}/api/docs/",
                "",
                "Try it:",
                f"  curl -s {BASE_URL}/api/orchestrate -H 'Authorization: Bearer <API key>' \\",
                "    -H 'Content-Type: application/json' \\",
                """    -d '{"intent": "summarize", "payload": {"text": "..."}}'""",
                "",
            ]
        )
