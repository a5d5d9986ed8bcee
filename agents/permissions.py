from __future__ import annotations

from rest_framework.permissions import SAFE_METHODS, BasePermission

from agents.principal import Principal


class HasScope(BasePermission):
    """Requires an authenticated Principal holding the view's scope for this method.

    Views declare ``read_scope`` and ``write_scope`` (or ``required_scopes`` per action).
    """

    message = "Your role may not do this."

    def has_permission(self, request, view) -> bool:
        principal = request.auth
        if not isinstance(principal, Principal):
            return False
        scope = required_scope(request, view)
        return scope is None or principal.has_scope(scope)


def required_scope(request, view) -> str | None:
    per_action = getattr(view, "required_scopes", None) or {}
    action = getattr(view, "action", None)
    if action in per_action:
        return per_action[action]
    if request.method in SAFE_METHODS:
        return getattr(view, "read_scope", None)
    return getattr(view, "write_scope", None)
