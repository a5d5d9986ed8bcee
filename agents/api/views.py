from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view

from agents import selectors, services
from agents.api.base import OrganizationScopedModelViewSet
from agents.api.serializers import AgentSerializer, DatasetSerializer, ToolSerializer
from agents.choices import Scope
from config.pagination import CappedCursorPagination
from config.schema import ErrorEnvelopeSerializer


class ByNamePagination(CappedCursorPagination):
    ordering = ("slug", "id")


@extend_schema_view(
    destroy=extend_schema(
        responses={
            204: None,
            409: OpenApiResponse(
                ErrorEnvelopeSerializer, description="IN_USE: part of recorded runs."
            ),
        }
    )
)
class CatalogViewSet(OrganizationScopedModelViewSet):
    read_scope = Scope.AGENTS_READ
    write_scope = Scope.AGENTS_WRITE
    pagination_class = ByNamePagination
    alternate_lookup_field = "slug"
    lookup_value_regex = r"[^/]+"


class AgentViewSet(CatalogViewSet):
    """Agent definitions of the caller's organization, addressed by id or slug."""

    serializer_class = AgentSerializer

    def base_queryset(self):
        return selectors.agent_list()

    def perform_create(self, serializer) -> None:
        data = dict(serializer.validated_data)
        serializer.instance = services.agent_create(
            organization=self.principal.organization, **data
        )

    def perform_update(self, serializer) -> None:
        data = dict(serializer.validated_data)
        intents = data.pop("intents", None)
        serializer.instance = services.agent_update(
            agent=serializer.instance, intents=intents, **data
        )


class ToolViewSet(CatalogViewSet):
    serializer_class = ToolSerializer

    def base_queryset(self):
        return selectors.tool_list()


class DatasetViewSet(CatalogViewSet):
    serializer_class = DatasetSerializer

    def base_queryset(self):
        return selectors.dataset_list()
