from __future__ import annotations

from drf_spectacular.utils import extend_schema

from agents.api.base import OrganizationScopedReadOnlyViewSet
from agents.choices import Scope
from runs import selectors
from runs.api.filters import RunFilterSerializer, run_filter
from runs.api.serializers import RunDetailSerializer, RunListSerializer
from runs.models import AgentRun


class RunViewSet(OrganizationScopedReadOnlyViewSet):
    """Runs of the caller's organization, newest first."""

    queryset = AgentRun.objects.none()  # typing for the schema; base_queryset() is used
    read_scope = Scope.RUNS_READ
    write_scope = Scope.RUNS_WRITE

    def base_queryset(self):
        if self.action == "list":
            return selectors.run_list_page()
        return selectors.run_detail() if self.action == "retrieve" else selectors.run_list()

    def get_serializer_class(self):
        return RunDetailSerializer if self.action == "retrieve" else RunListSerializer

    def filter_queryset(self, queryset):
        if self.action != "list":
            return queryset
        # A plain dict: a QueryDict lets DRF skip blank values ("until=") instead of refusing.
        params = RunFilterSerializer(data=self.request.query_params.dict())
        params.is_valid(raise_exception=True)
        return run_filter(queryset, params.validated_data)

    @extend_schema(parameters=[RunFilterSerializer])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)
