from __future__ import annotations

from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agents"
    verbose_name = "Agents and tenancy"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings

        from agents import (
            schema,  # noqa: F401  (registers the OpenAPI auth extensions)
            signals,  # noqa: F401  (definitions_changed on model writes)
        )
        from agents.handlers import registry

        # Handlers register themselves on import; definitions in the database name them.
        registry.autodiscover(settings.AGENT_HANDLER_MODULES)
