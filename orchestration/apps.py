from __future__ import annotations

from django.apps import AppConfig


class OrchestrationConfig(AppConfig):
    name = "orchestration"
    verbose_name = "Orchestration"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from agents.signals import definitions_changed
        from orchestration import worker  # noqa: F401  (Celery signals: the worker as a node)
        from orchestration.api import fleet_auth  # noqa: F401  (OpenAPI auth extensions)
        from orchestration.services.resolution import definitions_invalidate

        # Intent resolution's cached rows go stale when a definition changes.
        definitions_changed.connect(definitions_invalidate, dispatch_uid="resolution-cache")
