"""The operators' console for what can run: tenancy, credentials and agent definitions."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from agents import services
from agents.admin_scope import (
    EDIT,
    OrganizationScopedAdmin,
    OrganizationScopedInline,
    ScopedRelatedFieldListFilter,
    scope_queryset,
)
from agents.choices import DEFAULT_API_KEY_SCOPES, Scope
from agents.models import ApiKey, Organization, OrganizationMember

admin.site.site_header = "Agent Control Plane"
admin.site.site_title = "Agent Control Plane"
admin.site.index_title = "Operations"

TIMESTAMPS = ("created_at", "updated_at")
BY_ORGANIZATION = ("organization", ScopedRelatedFieldListFilter)


# --- Tenancy ---------------------------------------------------------------------------


class OrganizationMemberInline(OrganizationScopedInline, admin.TabularInline):
    model = OrganizationMember
    extra = 0
    fields = ("user", "role", "status", "joined_at")
    raw_id_fields = ("user",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[OrganizationMember]:
        return super().get_queryset(request).select_related("user")


@admin.register(Organization)
class OrganizationAdmin(OrganizationScopedAdmin):
    list_display = ("slug", "name", "plan", "created_at")
    list_filter = ("plan",)
    search_fields = ("slug", "name")
    readonly_fields = TIMESTAMPS
    inlines = (OrganizationMemberInline,)


@admin.register(OrganizationMember)
class OrganizationMemberAdmin(OrganizationScopedAdmin):
    list_display = ("user", "organization", "role", "status", "joined_at")
    list_filter = ("role", "status", BY_ORGANIZATION)
    list_select_related = ("user", "organization")
    search_fields = ("user__username", "user__email", "organization__slug")
    raw_id_fields = ("user",)
    autocomplete_fields = ("organization",)
    readonly_fields = TIMESTAMPS


# --- API keys -------------------------------------------------------------------------


class ApiKeyStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return (("usable", "Usable"), ("revoked", "Revoked"), ("expired", "Expired"))

    def queryset(self, request, queryset):
        now = timezone.now()
        revoked = Q(revoked_at__lte=now)
        expired = Q(expires_at__lte=now)
        if self.value() == "usable":
            return queryset.exclude(revoked).exclude(expired)
        if self.value() == "revoked":
            return queryset.filter(revoked)
        if self.value() == "expired":
            return queryset.filter(expired)
        return queryset


def _scopes_field() -> forms.MultipleChoiceField:
    return forms.MultipleChoiceField(
        choices=Scope.choices, widget=forms.CheckboxSelectMultiple, required=False
    )


class ApiKeyAddForm(forms.ModelForm):
    """Only what a person chooses; the secret, prefix and hash are made by the service."""

    scopes = _scopes_field()

    class Meta:
        model = ApiKey
        fields = ("organization", "name", "scopes", "expires_at")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["scopes"].initial = list(DEFAULT_API_KEY_SCOPES)

    def clean_expires_at(self):
        expires_at = self.cleaned_data["expires_at"]
        if expires_at is not None and expires_at <= timezone.now():
            raise forms.ValidationError("A new key must expire in the future.")
        return expires_at


class ApiKeyChangeForm(forms.ModelForm):
    scopes = _scopes_field()

    class Meta:
        model = ApiKey
        fields = ("name", "scopes", "expires_at")


@admin.register(ApiKey)
class ApiKeyAdmin(OrganizationScopedAdmin):
    # key_hash is deliberately absent: the list is screen-shared and exported.
    list_display = (
        "name",
        "prefix",
        "organization",
        "scope_list",
        "usable",
        "last_used_at",
        "expires_at",
        "revoked_at",
        "created_at",
    )
    list_filter = (ApiKeyStateFilter, BY_ORGANIZATION)
    list_select_related = ("organization",)
    # prefix__exact rather than "=prefix": iexact would wrap the column in UPPER() and
    # miss its unique index.
    search_fields = ("name", "prefix__exact", "organization__slug")
    raw_id_fields = ("created_by",)
    autocomplete_fields = ("organization",)
    actions = ("revoke_keys",)
    add_form = ApiKeyAddForm
    form = ApiKeyChangeForm
    add_fieldsets = ((None, {"fields": ("organization", "name", "scopes", "expires_at")}),)
    fieldsets = (
        (None, {"fields": ("organization", "name", "scopes", "expires_at")}),
        (
            "Issued",
            {
                "fields": (
                    "prefix",
                    "key_hash",
                    "created_by",
                    "last_used_at",
                    "revoked_at",
                    *TIMESTAMPS,
                )
            },
        ),
    )
    # Revocation goes through the action so it is recorded by the service, and a key
    # never moves to another organization.
    change_readonly_fields = (
        "organization",
        "prefix",
        "key_hash",
        "created_by",
        "last_used_at",
        "revoked_at",
        *TIMESTAMPS,
    )

    @admin.display(description="scopes")
    def scope_list(self, obj: ApiKey) -> str:
        return ", ".join(obj.scopes)

    @admin.display(boolean=True)
    def usable(self, obj: ApiKey) -> bool:
        return obj.is_usable()

    def get_fieldsets(self, request, obj=None):
        return self.add_fieldsets if obj is None else self.fieldsets

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.change_readonly_fields

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, change=change, **kwargs)

    def save_model(self, request, obj: ApiKey, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        issued = services.api_key_create(
            organization=form.cleaned_data["organization"],
            name=form.cleaned_data["name"],
            scopes=form.cleaned_data["scopes"],
            expires_at=form.cleaned_data["expires_at"],
            created_by=request.user,
        )
        # The admin goes on to log and redirect to `obj`, so it must become the stored row.
        for field in ApiKey._meta.concrete_fields:
            setattr(obj, field.attname, getattr(issued.api_key, field.attname))
        obj._state.adding = False
        obj._state.db = issued.api_key._state.db
        messages.success(request, f"Copy it now, it is not shown again: {issued.raw_key}")

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = 0
        for api_key in scope_queryset(queryset, request, EDIT).filter(revoked_at__isnull=True):
            services.api_key_revoke(api_key=api_key)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} key(s).", messages.SUCCESS)


# The agent definitions' admin, split out by concern; imported last, as it uses the above.
from agents import admin_definitions  # noqa: E402,F401
