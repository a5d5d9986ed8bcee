from __future__ import annotations

from django.urls import path

from runs.api.callbacks import MetricCallbackView, StepCallbackView, ToolExecutionCallbackView

# The run list, detail and commands are routed by orchestration.api (it adds cancel/retry).
urlpatterns = [
    path(
        "runs/<uuid:run_id>/tool-executions/",
        ToolExecutionCallbackView.as_view(),
        name="run-callback-tool-executions",
    ),
    path("runs/<uuid:run_id>/metrics/", MetricCallbackView.as_view(), name="run-callback-metrics"),
    path("runs/<uuid:run_id>/steps/", StepCallbackView.as_view(), name="run-callback-steps"),
]
