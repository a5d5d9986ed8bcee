"""The shared base of every API view: the caller's organization scopes every queryset."""

from __future__ import annotations

import uuid

from django.db import transaction
from django.db.models import Model, ProtectedError, QuerySet
from django.http import Http404
from rest_framework import viewsets

from agents.principal import Principal
from config.exceptions import ApiError


def scope_to_organization(
    queryset: QuerySet, principal: Principal, field: str = "organization"
) -> QuerySet:
    """The one place where API querysets are narrowed to the caller's organization.

    Anything outside it is then simply absent: another organization's objects answer 404.
    """
    return queryset.filter(**{field: principal.organization})


class OrganizationScopedViewSetMixin:
    organization_field = "organization"
    # Objects may be addressed by primary key or by this field (e.g. "slug").
    alternate_lookup_field: str | None = None

    @property
    def principal(self) -> Principal:
        return self.request.auth

    def base_queryset(self) -> QuerySet:
        """The unscoped queryset (usually a selector); get_queryset() scopes it."""
        return super().get_queryset()

    def get_queryset(self) -> QuerySet:
        return scope_to_organization(self.base_queryset(), self.principal, self.organization_field)

    def get_object(self) -> Model:
        queryset = self.filter_queryset(self.get_queryset())
        value = self.kwargs[self.lookup_url_kwarg or self.lookup_field]
        try:
            lookup = {"pk": uuid.UUID(str(value))}
        except ValueError:
            if self.alternate_lookup_field is None:
                raise Http404 from None
            lookup = {self.alternate_lookup_field: value}
        obj = queryset.filter(**lookup).first()
        if obj is None:
            raise Http404
        self.check_object_permissions(self.request, obj)
        return obj


class OrganizationScopedModelViewSet(OrganizationScopedViewSetMixin, viewsets.ModelViewSet):
    """Writes run in one transaction and always land in the caller's organization."""

    def perform_create(self, serializer) -> None:
        with transaction.atomic():
            serializer.save(**{self.organization_field: self.principal.organization})

    def perform_update(self, serializer) -> None:
        with transaction.atomic():
            serializer.save()

    def perform_destroy(self, instance) -> None:
        try:
            with transaction.atomic():
                instance.delete()
        except ProtectedError as exc:
            # Runs and tool executions keep their definitions (on_delete=PROTECT).
            label = instance._meta.verbose_name
            raise ApiError(
                "IN_USE",
                f"This {label} is part of recorded runs and cannot be deleted; disable it instead.",
                http_status=409,
                details={"references": len(exc.protected_objects)},
            ) from exc


class OrganizationScopedReadOnlyViewSet(
    OrganizationScopedViewSetMixin, viewsets.ReadOnlyModelViewSet
):
    pass
