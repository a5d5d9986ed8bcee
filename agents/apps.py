from __future__ import annotations

from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agents"
    verbose_name = "Agents and tenancy"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings
        from django.db.backends.signals import connection_created

        from agents import (
            schema,  # noqa: F401  (registers the OpenAPI auth extensions)
            signals,  # noqa: F401  (definitions_changed on model writes)
        )
        from agents.db import on_connection_created
        from agents.handlers import registry

        # PostgreSQL timestamps through psycopg's compiled loader (agents/db.py).
        connection_created.connect(on_connection_created, dispatch_uid="timestamps-fast")

        # Handlers register themselves on import; definitions in the database name them.
        registry.autodiscover(settings.AGENT_HANDLER_MODULES)
