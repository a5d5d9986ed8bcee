"""Create the demo data (idempotent) and say how to log in and call the API."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from agents.demo import DEMO_API_KEY_NAME, DEMO_ORGANIZATION_SLUG, demo_seed

BASE_URL = "http://127.0.0.1:8000"


class Command(BaseCommand):
    help = (
        "Create the demo organization, a superuser 'admin' and an API key, where missing; "
        "prints the new password and key (they are shown only once)."
    )

    def handle(self, *args, **options) -> None:
        result = demo_seed(stdout=self.stdout)
        password = result["password"] or (
            f"(already created; reset with `python manage.py changepassword {result['username']}`)"
        )
        if result["api_key"]:
            api_key = result["api_key"]
        else:
            api_key = (
                f"(a key named {DEMO_API_KEY_NAME!r} already exists; create another with "
                f"`python manage.py create_api_key --org {DEMO_ORGANIZATION_SLUG} --name <name>`)"
            )
        lines = [
            "",
            f"Organization: {result['organization'].slug}",
            f"Admin:        {BASE_URL}/admin/",
            f"  username:   {result['username']}",
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
        self.stdout.write("\n".join(lines))
