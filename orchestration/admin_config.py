"""The live configuration in the admin: an editor, the revision history and revert.

Imported at the bottom of orchestration/admin.py: it re-registers the revision admin
with the editor's URLs. Saving and reverting call the same services as the API, so a
change made here is validated, recorded and announced exactly like one made there.

Editing the configuration is adding a revision, so it takes the model's "add"
permission (the generic add form stays closed: revisions are written by the services).
"""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from orchestration.admin import OrchestratorConfigRevisionAdmin
from orchestration.models import OrchestratorConfigRevision
from orchestration.services.config import (
    ConfigInvalid,
    config_diff,
    config_errors_flat,
    config_live,
    config_revert,
    config_revision_document,
    config_update,
)
from runs.admin import deferring_changelist

HISTORY_ROWS = 20


class LiveConfigForm(forms.Form):
    document = forms.CharField(
        widget=forms.Textarea(
            attrs={"rows": 48, "cols": 90, "spellcheck": "false", "style": "font-family: monospace"}
        ),
        help_text="The whole document as JSON; every section and field is required.",
    )
    comment = forms.CharField(
        max_length=500, required=False, help_text="Why: kept on the revision."
    )

    def clean_document(self):
        try:
            document = json.loads(self.cleaned_data["document"])
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise forms.ValidationError("The document must be a JSON object.")
        return document


def _pretty(document: dict) -> str:
    return json.dumps(document, indent=2, sort_keys=False)


def diff_lines(diff: dict | None) -> list[tuple[str, str, str]]:
    return [
        (path, json.dumps(change.get("from")), json.dumps(change.get("to")))
        for path, change in (diff or {}).items()
    ]


class ConfigRevisionAdmin(OrchestratorConfigRevisionAdmin):
    list_display = ("created_at", "created_by", "comment", "changes", "revert_link")
    actions = ("revert_to_selected",)

    def has_edit_config_permission(self, request: HttpRequest) -> bool:
        user = request.user
        return (
            user.is_active
            and user.is_staff
            and user.has_perm("orchestration.add_orchestratorconfigrevision")
        )

    def get_list_display(self, request: HttpRequest):
        shown = super().get_list_display(request)
        if self.has_edit_config_permission(request):
            return shown
        return tuple(name for name in shown if name != "revert_link")

    def get_changelist(self, request: HttpRequest, **kwargs) -> type[ChangeList]:
        # The diff is shown in the list (it is small); the whole document is not.
        return deferring_changelist(("document",))

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "live/",
                self.admin_site.admin_view(self.live_config_view),
                name="{}_{}_live".format(*info),
            ),
            path(
                "<path:object_id>/revert/",
                self.admin_site.admin_view(self.revert_view),
                name="{}_{}_revert".format(*info),
            ),
            *super().get_urls(),
        ]

    # --- list and detail -----------------------------------------------------------------

    @admin.display(description="changes")
    def changes(self, obj: OrchestratorConfigRevision) -> str:
        lines = diff_lines(obj.diff)
        if not lines:
            return "-"
        return format_html_join("", "<div><code>{}</code>: {} &rarr; {}</div>", lines)

    @admin.display(description="")
    def revert_link(self, obj: OrchestratorConfigRevision) -> str:
        url = reverse("admin:orchestration_orchestratorconfigrevision_revert", args=[obj.pk])
        return format_html('<a href="{}">revert to this</a>', url)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "can_edit_config": self.has_edit_config_permission(request),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def changelist_view(self, request, extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "can_edit_config": self.has_edit_config_permission(request),
        }
        return super().changelist_view(request, extra_context)

    @admin.action(description="Revert to the selected revision", permissions=["edit_config"])
    def revert_to_selected(self, request: HttpRequest, queryset) -> None:
        revisions = list(queryset[:2])
        if len(revisions) != 1:
            self.message_user(request, "Select exactly one revision.", level=messages.WARNING)
            return
        self._revert(request, revisions[0])

    def _revert(self, request: HttpRequest, revision: OrchestratorConfigRevision) -> None:
        try:
            written = config_revert(
                revision=revision, actor_user=request.user, actor=f"admin:{request.user.pk}"
            )
        except ConfigInvalid as exc:
            for path_, message in config_errors_flat(exc.errors):
                self.message_user(
                    request,
                    f"Not reverted: that document is no longer valid: {path_}: {message}",
                    level=messages.ERROR,
                )
            return
        if written is None:
            self.message_user(request, "That document is the live configuration already.")
        else:
            self.message_user(request, f"Reverted: {len(written.diff)} setting(s) changed.")

    # --- the editor and the revert page ----------------------------------------------------

    def live_config_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        can_edit = self.has_edit_config_permission(request)
        document, revision = config_live()
        errors: list[tuple[str, str]] = []
        if request.method == "POST":
            if not can_edit:
                raise PermissionDenied
            form = LiveConfigForm(request.POST)
            if form.is_valid():
                try:
                    written = config_update(
                        document=form.cleaned_data["document"],
                        actor_user=request.user,
                        actor=f"admin:{request.user.pk}",
                        comment=form.cleaned_data["comment"],
                    )
                except ConfigInvalid as exc:
                    errors = config_errors_flat(exc.errors)
                    form.add_error("document", f"{len(errors)} setting(s) are invalid; see above.")
                else:
                    if written is None:
                        self.message_user(request, "Nothing changed: no revision was written.")
                    else:
                        self.message_user(
                            request, f"Saved: {len(written.diff)} setting(s) changed."
                        )
                    return HttpResponseRedirect(request.path)
        else:
            form = LiveConfigForm(initial={"document": _pretty(document)})
        history = [
            (item, diff_lines(item.diff))
            for item in self.get_queryset(request)
            .select_related("created_by")
            .defer("document")
            .order_by("-created_at")[:HISTORY_ROWS]
        ]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Live configuration",
            "form": form,
            "errors": errors,
            "revision": revision,
            "history": history,
            "can_edit": can_edit,
            "heartbeat_interval_s": document["nodes"]["heartbeat_interval_s"],
        }
        return TemplateResponse(
            request, "admin/orchestration/orchestratorconfigrevision/live_config.html", context
        )

    def revert_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not self.has_edit_config_permission(request):
            raise PermissionDenied
        revision = get_object_or_404(OrchestratorConfigRevision, pk=object_id)
        if request.method == "POST":
            self._revert(request, revision)
            return HttpResponseRedirect(
                reverse("admin:orchestration_orchestratorconfigrevision_live")
            )
        live, _ = config_live()
        target = config_revision_document(revision)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Revert the live configuration",
            "object": revision,
            "changes": diff_lines(config_diff(live, target)),
        }
        return TemplateResponse(
            request,
            "admin/orchestration/orchestratorconfigrevision/revert_confirmation.html",
            context,
        )


admin.site.unregister(OrchestratorConfigRevision)
admin.site.register(OrchestratorConfigRevision, ConfigRevisionAdmin)
