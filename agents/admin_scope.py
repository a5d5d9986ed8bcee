"""Which organizations' objects a staff user may see and change in the admin.

Superusers see everything. Any other staff user sees only the objects of the
organizations they are an active member of, and may do there what their role's scopes
let them do through the API (agents/choices.py ROLE_SCOPES):

- VIEW (agents:read; every role): list and open;
- OPERATE (runs:write; operator, admin, owner): cancel and retry runs;
- EDIT (agents:write; admin, owner): add, change, delete, change an agent's status,
  force its circuit (as the API does).

Django's model permissions still decide which kinds of objects a staff user may touch
at all (give them through a group); the role narrows that per organization, so both
must allow an action. Fleet-wide objects (nodes, the live configuration) belong to no
organization and are governed by the model permissions alone.
"""

from __future__ import annotations

import uuid
from functools import cache

from django.contrib import admin
from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest

from agents.choices import ROLE_SCOPES, MemberStatus, Scope
from agents.models import Organization, OrganizationMember

VIEW = "view"
OPERATE = "operate"
EDIT = "edit"

RIGHT_SCOPES = {VIEW: Scope.AGENTS_READ, OPERATE: Scope.RUNS_WRITE, EDIT: Scope.AGENTS_WRITE}


def rights_of(role: str) -> frozenset[str]:
    scopes = ROLE_SCOPES.get(role, frozenset())
    return frozenset(right for right, scope in RIGHT_SCOPES.items() if scope in scopes)


def organization_rights(request: HttpRequest) -> dict[uuid.UUID, frozenset[str]]:
    """The user's rights per organization: one query per request, whatever the page asks."""
    rights = getattr(request, "_organization_rights", None)
    if rights is None:
        rows = OrganizationMember.objects.filter(
            user_id=request.user.pk, status=MemberStatus.ACTIVE
        ).values_list("organization_id", "role")
        rights = {organization_id: rights_of(role) for organization_id, role in rows}
        request._organization_rights = rights
    return rights


def organizations_with(request: HttpRequest, right: str) -> frozenset[uuid.UUID] | None:
    """The organizations where the user holds `right`; None means every one (superuser)."""
    if request.user.is_superuser:
        return None
    return frozenset(
        organization_id
        for organization_id, rights in organization_rights(request).items()
        if right in rights
    )


@cache
def organization_path_of(model: type[models.Model]) -> str | None:
    """The lookup from a model to its organization ("" for Organization; None: it has none)."""
    if issubclass(model, Organization):
        return ""
    names = {field.name: field for field in model._meta.get_fields() if field.is_relation}
    organization = names.get("organization")
    if (
        organization is not None
        and organization.many_to_one
        and organization.related_model is Organization
    ):
        return "organization"
    # A tool execution's run may be gone (SET_NULL); its tool never is (PROTECT).
    for via in ("agent", "tool", "run"):
        field = names.get(via)
        if field is not None and field.many_to_one:
            path = organization_path_of(field.related_model)
            if path is not None:
                return f"{via}__{path}" if path else via
    return None


def organization_id_of(obj: models.Model) -> uuid.UUID | None:
    path = organization_path_of(type(obj))
    if path is None:
        return None
    if path == "":
        return obj.pk
    *hops, last = path.split("__")
    target = obj
    for hop in hops:
        target = getattr(target, hop, None)
        if target is None:
            return None
    return getattr(target, f"{last}_id", None)


def scope_queryset(queryset: QuerySet, request: HttpRequest, right: str = VIEW) -> QuerySet:
    """The rows of organizations where the user holds `right` (all rows for a superuser)."""
    organizations = organizations_with(request, right)
    if organizations is None:
        return queryset
    path = organization_path_of(queryset.model)
    if path is None:
        return queryset
    return queryset.filter(**{f"{path}__in" if path else "pk__in": organizations})


def has_right(request: HttpRequest, right: str, obj: models.Model | None = None) -> bool:
    """obj None: whether the user holds the right in at least one organization."""
    organizations = organizations_with(request, right)
    if organizations is None:
        return True
    if obj is None:
        return bool(organizations)
    if organization_path_of(type(obj)) is None:
        return True  # not an organization's object: the model permissions decide
    return organization_id_of(obj) in organizations


class OrganizationScopedAdmin(admin.ModelAdmin):
    """Rows, foreign-key choices and permissions narrowed to the user's organizations."""

    def _allows(self, request: HttpRequest, right: str, obj=None) -> bool:
        if organization_path_of(self.model) is None:
            return True  # fleet-wide: the model permissions alone decide
        return has_right(request, right, obj)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return scope_queryset(super().get_queryset(request), request, VIEW)

    def get_search_results(self, request: HttpRequest, queryset, search_term):
        # An autocomplete widget offers what the form would accept: editable organizations.
        if getattr(request.resolver_match, "url_name", "") == "autocomplete":
            queryset = scope_queryset(queryset, request, EDIT)
        return super().get_search_results(request, queryset, search_term)

    def get_field_queryset(self, db, db_field, request: HttpRequest):
        # What a form may pick (select, autocomplete or raw id: all validate against it).
        queryset = super().get_field_queryset(db, db_field, request)
        if request.user.is_superuser or organization_path_of(db_field.related_model) is None:
            return queryset
        if queryset is None:
            queryset = db_field.remote_field.model._default_manager.using(db).all()
        return scope_queryset(queryset, request, EDIT)

    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        return super().has_view_permission(request, obj) and self._allows(request, VIEW, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return super().has_add_permission(request) and self._allows(request, EDIT)

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return super().has_change_permission(request, obj) and self._allows(request, EDIT, obj)

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return super().has_delete_permission(request, obj) and self._allows(request, EDIT, obj)

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """Actions on live work (cancel, retry, force a circuit): operators and up."""
        return self.has_view_permission(request) and self._allows(request, OPERATE)


class OrganizationScopedInline(admin.options.InlineModelAdmin):
    """An inline is as writable as the organization of the object it sits under."""

    def get_field_queryset(self, db, db_field, request: HttpRequest):
        queryset = super().get_field_queryset(db, db_field, request)
        if request.user.is_superuser or organization_path_of(db_field.related_model) is None:
            return queryset
        if queryset is None:
            queryset = db_field.remote_field.model._default_manager.using(db).all()
        return scope_queryset(queryset, request, EDIT)

    def _parent_editable(self, request: HttpRequest, obj) -> bool:
        if organization_path_of(self.parent_model) is None:
            return True
        return has_right(request, EDIT, obj)

    def has_add_permission(self, request: HttpRequest, obj) -> bool:
        return super().has_add_permission(request, obj) and self._parent_editable(request, obj)

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return super().has_change_permission(request, obj) and self._parent_editable(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return super().has_delete_permission(request, obj) and self._parent_editable(request, obj)


class ScopedRelatedFieldListFilter(admin.RelatedFieldListFilter):
    """A related-object filter offering only the user's organizations' objects.

    An organization's own objects are labelled with it, since names repeat across
    organizations (every organization is seeded with the same agents).
    """

    def has_output(self) -> bool:
        # Django hides (and then does not apply) a filter with a single choice; a user of
        # one organization still follows links filtered by it ("all runs of this agent").
        return bool(self.lookup_choices) or self.lookup_val is not None

    def field_choices(self, field, request: HttpRequest, model_admin):
        model = field.related_model
        queryset = scope_queryset(model._default_manager.all(), request, VIEW)
        ordering = self.field_admin_ordering(field, request, model_admin)
        if ordering:
            queryset = queryset.order_by(*ordering)
        if organization_path_of(model) == "organization":
            queryset = queryset.select_related("organization")
            return [(obj.pk, f"{obj} ({obj.organization})") for obj in queryset]
        return [(obj.pk, str(obj)) for obj in queryset]
