from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from agents.authentication_throttle import login_rate_limited
from config import health
from orchestration.observability import views as observability

urlpatterns = [
    # Before the admin's own URLs: its login view, with failed attempts rate-limited.
    path("admin/login/", login_rate_limited(admin.site.login), name="admin-login-limited"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/", include("agents.api.urls")),
    path("api/", include("runs.api.urls")),
    path("api/", include("orchestration.api.urls")),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", observability.metrics, name="metrics"),
]
