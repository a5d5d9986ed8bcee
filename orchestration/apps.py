from __future__ import annotations

from django.apps import AppConfig


class OrchestrationConfig(AppConfig):
    name = "orchestration"
    verbose_name = "Orchestration"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from orchestration import worker  # noqa: F401  (Celery signals: the worker as a node)
        from orchestration.api import fleet_auth  # noqa: F401  (OpenAPI auth extensions)
