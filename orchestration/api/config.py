"""/api/orchestration/config: the live configuration, its history and revert.

Reads are open to any authenticated caller (an organization's key included: agents
run under these defaults); changes are for nodes and operators only (FleetViewMixin).
Field names of the envelope are camelCase like the other original routes; the document
itself keeps its snake_case keys (docs/CONFIGURATION.md).
"""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from config.exceptions import ApiError
from config.pagination import NewestFirstCursorPagination
from orchestration.api.fleet_auth import FleetPrincipal, FleetViewMixin
from orchestration.api.serializers import ErrorSerializer
from orchestration.models import OrchestratorConfigRevision
from orchestration.services.config import (
    ConfigInvalid,
    config_live,
    config_revert,
    config_revisions,
    config_update,
)
from orchestration.services.config_schema import ConfigDocumentSerializer

# --- wire shapes -------------------------------------------------------------------------


class ConfigRevisionSummarySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    createdAt = serializers.DateTimeField()
    createdBy = serializers.CharField(allow_null=True, help_text="Username; null for a node.")
    comment = serializers.CharField(allow_blank=True)


class ConfigDiffEntrySerializer(serializers.Serializer):
    # "from" is a Python keyword: declared through the fields mapping.
    to = serializers.JSONField(allow_null=True)

    def get_fields(self):
        fields = super().get_fields()
        fields["from"] = serializers.JSONField(allow_null=True)
        return fields


class ConfigRevisionSerializer(ConfigRevisionSummarySerializer):
    diff = serializers.DictField(
        child=ConfigDiffEntrySerializer(),
        help_text='Changed settings by dotted path: {"rate_limit.limit": {"from": 60, "to": 120}}.',
    )


class ConfigRevisionDetailSerializer(ConfigRevisionSerializer):
    document = ConfigDocumentSerializer()


class ConfigResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    config = ConfigDocumentSerializer()
    revision = ConfigRevisionSummarySerializer(
        allow_null=True, help_text="The revision in force; null while the defaults are."
    )
    timestamp = serializers.DateTimeField()


class ConfigWriteResponseSerializer(ConfigResponseSerializer):
    changed = serializers.BooleanField(
        help_text="False when the document was the live one already (no revision written)."
    )


class ConfigRevisionListResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    revisions = ConfigRevisionSerializer(many=True)
    next = serializers.URLField(allow_null=True, help_text="The next (older) page.")
    previous = serializers.URLField(allow_null=True)
    timestamp = serializers.DateTimeField()


class ConfigRevisionResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    revision = ConfigRevisionDetailSerializer()
    timestamp = serializers.DateTimeField()


class ConfigErrorResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    error = ErrorSerializer()
    timestamp = serializers.DateTimeField()


def _now_iso() -> str:
    return timezone.now().isoformat()


def revision_wire(revision: OrchestratorConfigRevision | None, *, detail: str = "") -> dict | None:
    """detail: "" (summary), "diff" or "document" (the diff and the document)."""
    if revision is None:
        return None
    wire = {
        "id": str(revision.pk),
        "createdAt": revision.created_at.isoformat(),
        "createdBy": revision.created_by.get_username() if revision.created_by else None,
        "comment": revision.comment,
    }
    if detail:
        wire["diff"] = revision.diff
    if detail == "document":
        wire["document"] = revision.document
    return wire


def _actor(request) -> tuple[object | None, str]:
    principal: FleetPrincipal = request.auth
    return principal.user, principal.key


ERRORS = {
    code: OpenApiResponse(ConfigErrorResponseSerializer, description=description)
    for code, description in (
        (400, "INVALID_REQUEST: details name every bad field, nested by section."),
        (401, "UNAUTHENTICATED"),
        (403, "FORBIDDEN: only a node token or a staff session may change it."),
    )
}
COMMENT = OpenApiParameter(
    "comment", str, OpenApiParameter.QUERY, required=False, description="Kept on the revision."
)


# --- views -------------------------------------------------------------------------------


class ConfigView(FleetViewMixin, APIView):
    @extend_schema(
        operation_id="orchestration_config",
        summary="The live configuration document",
        responses={200: ConfigResponseSerializer, **ERRORS},
    )
    def get(self, request):
        document, revision = config_live()
        return Response(
            {
                "success": True,
                "config": document,
                "revision": revision_wire(revision),
                "timestamp": _now_iso(),
            }
        )

    @extend_schema(
        operation_id="orchestration_config_replace",
        summary="Replace the whole document",
        description=(
            "Every section and every field is required; unknown keys are refused. A valid "
            "document that differs from the live one becomes a new revision and a "
            "config.updated event; every process applies it within one heartbeat interval."
        ),
        request=ConfigDocumentSerializer,
        parameters=[COMMENT],
        responses={200: ConfigWriteResponseSerializer, **ERRORS},
    )
    def put(self, request):
        return self._write(request, partial=False)

    @extend_schema(
        operation_id="orchestration_config_update",
        summary="Change some settings",
        description=(
            "The body is deep-merged onto the live document, and the result is validated "
            'as a whole: {"rate_limit": {"limit": 120}} changes one setting.'
        ),
        request=ConfigDocumentSerializer(partial=True),
        parameters=[COMMENT],
        responses={200: ConfigWriteResponseSerializer, **ERRORS},
    )
    def patch(self, request):
        return self._write(request, partial=True)

    def _write(self, request, *, partial: bool) -> Response:
        user, actor = _actor(request)
        try:
            revision = config_update(
                document=request.data,
                actor_user=user,
                actor=actor,
                comment=request.query_params.get("comment", ""),
                partial=partial,
            )
        except ConfigInvalid as exc:
            raise ApiError(
                "INVALID_REQUEST", "The configuration is invalid; see details.", details=exc.errors
            ) from exc
        return _written(revision)


def _written(revision: OrchestratorConfigRevision | None) -> Response:
    document, live = config_live()
    return Response(
        {
            "success": True,
            "config": document,
            "revision": revision_wire(live),
            "changed": revision is not None,
            "timestamp": _now_iso(),
        }
    )


class RevisionPageQuerySerializer(serializers.Serializer):
    """The cursor pagination's parameters (validated by the paginator itself)."""

    cursor = serializers.CharField(
        required=False, allow_blank=True, help_text="From a previous page's next."
    )
    page_size = serializers.IntegerField(
        required=False, min_value=1, help_text="Results per page; larger values are capped at 200."
    )


class ConfigRevisionListView(FleetViewMixin, APIView):
    @extend_schema(
        operation_id="orchestration_config_revisions",
        summary="The history of the live configuration, newest first",
        parameters=[RevisionPageQuerySerializer],
        responses={200: ConfigRevisionListResponseSerializer, **ERRORS},
    )
    def get(self, request):
        paginator = NewestFirstCursorPagination()
        page = paginator.paginate_queryset(config_revisions(), request, view=self)
        return Response(
            {
                "success": True,
                "revisions": [revision_wire(revision, detail="diff") for revision in page],
                "next": paginator.get_next_link(),
                "previous": paginator.get_previous_link(),
                "timestamp": _now_iso(),
            }
        )


class ConfigRevisionDetailView(FleetViewMixin, APIView):
    @extend_schema(
        operation_id="orchestration_config_revision",
        summary="One revision with its whole document",
        responses={200: ConfigRevisionResponseSerializer, 404: ConfigErrorResponseSerializer},
    )
    def get(self, request, revision_id):
        revision = get_object_or_404(
            OrchestratorConfigRevision.objects.select_related("created_by"), pk=revision_id
        )
        return Response(
            {
                "success": True,
                "revision": revision_wire(revision, detail="document"),
                "timestamp": _now_iso(),
            }
        )


class ConfigRevisionRevertView(FleetViewMixin, APIView):
    @extend_schema(
        operation_id="orchestration_config_revert",
        summary="Make an old revision's document the live one again",
        description="Writes a new revision (history is append-only).",
        request=None,
        responses={
            200: ConfigWriteResponseSerializer,
            404: ConfigErrorResponseSerializer,
            **ERRORS,
        },
    )
    def post(self, request, revision_id):
        revision = get_object_or_404(OrchestratorConfigRevision, pk=revision_id)
        user, actor = _actor(request)
        try:
            written = config_revert(revision=revision, actor_user=user, actor=actor)
        except ConfigInvalid as exc:
            raise ApiError(
                "INVALID_REQUEST",
                "That revision's document is no longer valid; see details.",
                details=exc.errors,
            ) from exc
        return _written(written)
