from __future__ import annotations

from django.urls import path

from orchestration.api.fleet import HealthView, MetricsView, RouteView, ScalingEvaluateView

urlpatterns = [
    path("route", RouteView.as_view(), name="orchestration-route"),
    path("health", HealthView.as_view(), name="orchestration-health"),
    path("scaling/evaluate", ScalingEvaluateView.as_view(), name="orchestration-scaling-evaluate"),
    path("metrics", MetricsView.as_view(), name="orchestration-metrics"),
]
