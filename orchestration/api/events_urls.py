"""Event routes under /api/orchestration/ (API.md): no trailing slash."""

from __future__ import annotations

from django.urls import path

from orchestration.api.events import EventListView, event_stream_route

urlpatterns = [
    path("events", EventListView.as_view(), name="orchestration-events"),
    path("events/stream", event_stream_route(), name="orchestration-events-stream"),
]
