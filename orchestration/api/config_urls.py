"""Configuration routes under /api/orchestration/ (API.md): no trailing slash."""

from __future__ import annotations

from django.urls import path

from orchestration.api.config import (
    ConfigRevisionDetailView,
    ConfigRevisionListView,
    ConfigRevisionRevertView,
    ConfigView,
)

urlpatterns = [
    path("config", ConfigView.as_view(), name="orchestration-config"),
    path(
        "config/revisions", ConfigRevisionListView.as_view(), name="orchestration-config-revisions"
    ),
    path(
        "config/revisions/<uuid:revision_id>",
        ConfigRevisionDetailView.as_view(),
        name="orchestration-config-revision",
    ),
    path(
        "config/revisions/<uuid:revision_id>/revert",
        ConfigRevisionRevertView.as_view(),
        name="orchestration-config-revert",
    ),
]
