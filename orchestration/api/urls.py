from __future__ import annotations

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from orchestration.api.circuits import CircuitForceView, CircuitListView
from orchestration.api.views import OrchestrateView, RunViewSet

router = SimpleRouter(trailing_slash="/?")
router.register("runs", RunViewSet, basename="run")

urlpatterns = [
    path("orchestrate", OrchestrateView.as_view(), name="orchestrate"),
    path("orchestration/circuits", CircuitListView.as_view(), name="circuits"),
    path(
        "orchestration/circuits/<str:agent>/force",
        CircuitForceView.as_view(),
        name="circuit-force",
    ),
    path("orchestration/", include("orchestration.api.nodes_urls")),
    path("orchestration/", include("orchestration.api.fleet_urls")),
    path("orchestration/", include("orchestration.api.config_urls")),
    path("orchestration/", include("orchestration.api.events_urls")),
    *router.urls,
]
