from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.choices import Scope
from config.exceptions import ApiError
from orchestration.api.serializers import (
    OrchestrateRequestSerializer,
    OrchestrateResponseSerializer,
)
from orchestration.services.envelope import failure_envelope
from orchestration.services.orchestrator import OrchestrateCommand, orchestrate
from runs import services as run_services
from runs.api.serializers import RunDetailSerializer
from runs.api.views import RunViewSet as RunReadViewSet
from runs.choices import ACTIVE_RUN_STATES, RunMode

IDEMPOTENCY_KEY_MAX = 255


def _echoed_agent(data) -> str | None:
    """The request's agent, echoed in a failure only when it is a name (a string)."""
    agent = data.get("agent") if isinstance(data, dict) else None
    return agent if isinstance(agent, str) else None


class OrchestrateView(APIView):
    """Run an agent: resolve, police, persist, execute (sync) or enqueue (async)."""

    read_scope = Scope.RUNS_WRITE
    write_scope = Scope.RUNS_WRITE

    @extend_schema(
        operation_id="orchestrate",
        request=OrchestrateRequestSerializer,
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                str,
                OpenApiParameter.HEADER,
                required=False,
                description="Replays with the same key and request return the same run.",
            )
        ],
        responses={
            code: OpenApiResponse(OrchestrateResponseSerializer)
            for code in (200, 202, 400, 401, 403, 404, 409, 422, 429, 502, 504)
        },
    )
    def post(self, request):
        serializer = OrchestrateRequestSerializer(data=request.data)
        if not serializer.is_valid():
            body = failure_envelope(
                code="INVALID_REQUEST",
                message="The request is invalid; see details.",
                details=serializer.errors,
                agent=_echoed_agent(request.data),
            )
            return Response(body, status=status.HTTP_400_BAD_REQUEST)
        data = serializer.validated_data
        key = request.headers.get("Idempotency-Key") or None
        if key is not None and len(key) > IDEMPOTENCY_KEY_MAX:
            return Response(
                failure_envelope(
                    code="INVALID_REQUEST",
                    message=f"Idempotency-Key is longer than {IDEMPOTENCY_KEY_MAX} characters.",
                    details={"Idempotency-Key": ["Too long."]},
                ),
                status=status.HTTP_400_BAD_REQUEST,
            )
        command = OrchestrateCommand(
            intent=data["intent"],
            agent=data.get("agent"),
            payload=data.get("payload"),
            context=data.get("context") or {},
            mode=data["mode"],
            dataset_id=data.get("datasetId"),
            objective=data.get("objective") or "",
            idempotency_key=key,
        )
        result = orchestrate(command, request.auth)
        return Response(result.body, status=result.http_status, headers=result.headers)

    def handle_exception(self, exc):
        # Errors raised before the view body runs (unparseable JSON, bad or missing
        # credentials, throttling) still answer in the orchestrate failure shape (API.md).
        response = super().handle_exception(exc)
        body = response.data
        if isinstance(body, dict) and body.get("success") is False and "status" not in body:
            response.data = failure_envelope(
                code=body["error"]["code"],
                message=body["error"]["message"],
                details=body["error"].get("details"),
            )
        return response


class RunViewSet(RunReadViewSet):
    """Runs, plus the commands that act on one: cancel and retry."""

    required_scopes = {"cancel": Scope.RUNS_WRITE, "retry": Scope.RUNS_WRITE}

    @extend_schema(request=None, responses={200: RunDetailSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        run = self.get_object()
        try:
            run = run_services.run_cancel(run=run)
        except run_services.RunNotActive as exc:
            raise ApiError("RUN_NOT_ACTIVE", str(exc), http_status=409) from exc
        return Response(RunDetailSerializer(run).data)

    @extend_schema(request=None, responses={202: OrchestrateResponseSerializer})
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        """A new run of the same request, linked to this one and policed like any other."""
        original = self.get_object()
        if original.status in ACTIVE_RUN_STATES:
            raise ApiError(
                "RUN_NOT_FINISHED",
                f"Run {original.pk} is still {original.status}; only ended runs are retried.",
                http_status=409,
            )
        command = OrchestrateCommand(
            intent=original.intent,
            agent=original.agent.slug,
            payload=original.input,
            context=(original.meta or {}).get("context") or {},
            mode=RunMode.ASYNC,
            dataset_id=str(original.dataset_id) if original.dataset_id else None,
            objective=original.objective,
            retry_of=original,
        )
        result = orchestrate(command, request.auth)
        body = {**result.body, "retryOf": str(original.pk)}
        return Response(body, status=result.http_status, headers=result.headers)
