from __future__ import annotations

from rest_framework.routers import SimpleRouter

from agents.api.views import AgentViewSet, DatasetViewSet, ToolViewSet

router = SimpleRouter(trailing_slash="/?")
router.register("agents", AgentViewSet, basename="agent")
router.register("tools", ToolViewSet, basename="tool")
router.register("datasets", DatasetViewSet, basename="dataset")

urlpatterns = router.urls
