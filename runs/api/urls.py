from __future__ import annotations

from rest_framework.routers import SimpleRouter

from runs.api.views import RunViewSet

router = SimpleRouter(trailing_slash="/?")
router.register("runs", RunViewSet, basename="run")

urlpatterns = router.urls
