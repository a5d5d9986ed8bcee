"""The operators' console for agent definitions: agents, their intents, configs and tools.

Imported at the bottom of agents/admin.py. The orchestration layer re-registers the
agent admin with what only it knows (circuits, recent runs, the config schema).
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest

from agents import services
from agents.admin import BY_ORGANIZATION, TIMESTAMPS
from agents.admin_scope import (
    EDIT,
    OrganizationScopedAdmin,
    OrganizationScopedInline,
    ScopedRelatedFieldListFilter,
    scope_queryset,
)
from agents.choices import AgentStatus
from agents.handlers import registry
from agents.models import Agent, AgentCapability, AgentConfig, Dataset, Organization, Tool

# --- Agent definitions ------------------------------------------------------------------


class AgentCapabilityInline(OrganizationScopedInline, admin.TabularInline):
    model = AgentCapability
    extra = 0
    fields = ("name", "config")
    verbose_name = "intent"
    verbose_name_plural = "intents"


class AgentConfigInline(OrganizationScopedInline, admin.TabularInline):
    model = AgentConfig
    extra = 0
    fields = ("key", "value")


class ToolInlineFormSet(BaseInlineFormSet):
    """A tool added under an agent belongs to that agent's organization.

    The inline has no organization column, so the (organization, slug) constraint is
    skipped by model validation; it is checked here to answer with a form error instead
    of an IntegrityError.
    """

    def clean(self) -> None:
        super().clean()
        organization_id = self.instance.organization_id
        if organization_id is None:
            return
        seen: set[str] = set()
        for form in self.forms:
            if not form.has_changed() or form.cleaned_data.get("DELETE"):
                continue
            slug = form.cleaned_data.get("slug")
            if not slug:
                continue
            taken = (
                Tool.objects.filter(organization_id=organization_id, slug=slug)
                .exclude(pk=form.instance.pk)
                .exists()
            )
            if slug in seen or taken:
                form.add_error("slug", "This organization already has a tool with this slug.")
            seen.add(slug)

    def save_new(self, form, commit=True):
        form.instance.organization_id = self.instance.organization_id
        return super().save_new(form, commit=commit)


class ToolInline(OrganizationScopedInline, admin.TabularInline):
    model = Tool
    formset = ToolInlineFormSet
    extra = 0
    fields = ("name", "slug", "description")
    show_change_link = True


NO_HANDLER_LABEL = "(none: the agent cannot run)"


def handler_choices(current: str = "") -> list[tuple[str, str]]:
    """The handlers registered in this process, plus the current one if it is not."""
    registered = registry.keys()  # a sorted list, not a dict
    choices = [("", NO_HANDLER_LABEL), *((key, key) for key in registered)]
    if current and not registry.is_registered(current):
        choices.append((current, f"{current} (not registered)"))
    return choices


class AgentForm(forms.ModelForm):
    """The handler is picked from the registry, so a typo cannot name a handler nobody has."""

    handler = forms.ChoiceField(
        required=False,
        help_text="A handler registered by code (AGENT_HANDLER_MODULES); runs call it.",
    )

    class Meta:
        model = Agent
        fields = (
            "organization",
            "name",
            "slug",
            "kind",
            "status",
            "version",
            "owner_team",
            "description",
            "handler",
            "config",
        )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["handler"].choices = handler_choices(self.instance.handler or "")


@admin.register(Agent)
class AgentAdmin(OrganizationScopedAdmin):
    form = AgentForm
    list_display = (
        "name",
        "slug",
        "organization",
        "kind",
        "status",
        "intents",
        "handler",
        "handler_registered",
        "version",
        "owner_team",
        "updated_at",
    )
    list_filter = ("status", "kind", BY_ORGANIZATION)
    list_select_related = ("organization",)
    search_fields = ("name", "slug", "handler", "owner_team", "capabilities__name")
    autocomplete_fields = ("organization",)
    readonly_fields = ("handler_registration", *TIMESTAMPS)
    prepopulated_fields = {"slug": ("name",)}
    inlines = (AgentCapabilityInline, AgentConfigInline, ToolInline)
    actions = ("activate", "pause", "disable")
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "organization",
                    "name",
                    "slug",
                    "kind",
                    "status",
                    "version",
                    "owner_team",
                    "description",
                )
            },
        ),
        ("Handler and configuration", {"fields": ("handler", "handler_registration", "config")}),
        ("Record", {"fields": TIMESTAMPS, "classes": ("collapse",)}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Agent]:
        # One query for the intents column of a whole page instead of one per row.
        return super().get_queryset(request).prefetch_related("capabilities")

    @admin.display(description="intents")
    def intents(self, obj: Agent) -> str:
        return ", ".join(capability.name for capability in obj.capabilities.all())

    @admin.display(description="registered", boolean=True)
    def handler_registered(self, obj: Agent) -> bool:
        return registry.is_registered(obj.handler)

    @admin.display(description="registration")
    def handler_registration(self, obj: Agent) -> str:
        if not obj.handler:
            return "No handler: requests for this agent fail with AGENT_NOT_REGISTERED."
        if registry.is_registered(obj.handler):
            return f"{obj.handler} is registered in this process."
        return (
            f"{obj.handler} is not registered in this process: its runs fail with"
            " AGENT_NOT_REGISTERED until the module that registers it is loaded."
        )

    def _set_status(self, request: HttpRequest, queryset: QuerySet[Agent], status: str) -> None:
        # Changing what runs is editing the definition: admins and owners only.
        editable = scope_queryset(queryset, request, EDIT)
        changed = services.agent_set_status(agents=editable, status=status)
        label = AgentStatus(status).label.lower()
        self.message_user(request, f"{changed} agent(s) set to {label}.", messages.SUCCESS)

    @admin.action(description="Activate selected agents", permissions=["change"])
    def activate(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        self._set_status(request, queryset, AgentStatus.ACTIVE)

    @admin.action(description="Pause selected agents", permissions=["change"])
    def pause(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        self._set_status(request, queryset, AgentStatus.PAUSED)

    @admin.action(description="Disable selected agents", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        self._set_status(request, queryset, AgentStatus.DISABLED)


@admin.register(AgentCapability)
class AgentCapabilityAdmin(OrganizationScopedAdmin):
    list_display = ("name", "agent", "agent_organization", "agent_status")
    list_filter = ("agent__status", ("agent__organization", ScopedRelatedFieldListFilter))
    list_select_related = ("agent__organization",)
    search_fields = ("name", "agent__name", "agent__slug")
    autocomplete_fields = ("agent",)
    readonly_fields = TIMESTAMPS

    @admin.display(description="organization", ordering="agent__organization__slug")
    def agent_organization(self, obj: AgentCapability) -> Organization:
        return obj.agent.organization

    @admin.display(description="agent status", ordering="agent__status")
    def agent_status(self, obj: AgentCapability) -> str:
        return obj.agent.get_status_display()


@admin.register(AgentConfig)
class AgentConfigAdmin(OrganizationScopedAdmin):
    list_display = ("key", "agent", "updated_at")
    list_filter = (("agent__organization", ScopedRelatedFieldListFilter),)
    list_select_related = ("agent",)
    search_fields = ("key", "agent__name", "agent__slug")
    autocomplete_fields = ("agent",)
    readonly_fields = TIMESTAMPS


@admin.register(Tool)
class ToolAdmin(OrganizationScopedAdmin):
    list_display = ("slug", "name", "organization", "agent", "updated_at")
    list_filter = (BY_ORGANIZATION,)
    list_select_related = ("organization", "agent")
    search_fields = ("slug", "name", "description")
    autocomplete_fields = ("organization", "agent")
    readonly_fields = TIMESTAMPS
    prepopulated_fields = {"slug": ("name",)}


@admin.register(Dataset)
class DatasetAdmin(OrganizationScopedAdmin):
    list_display = ("slug", "name", "organization", "kind", "source", "updated_at")
    list_filter = ("kind", BY_ORGANIZATION)
    list_select_related = ("organization",)
    search_fields = ("slug", "name", "source")
    autocomplete_fields = ("organization",)
    readonly_fields = TIMESTAMPS
    prepopulated_fields = {"slug": ("name",)}
