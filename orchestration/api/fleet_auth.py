"""Who may touch the fleet: nodes (with the node token) and staff, plus read access for keys.

Node endpoints are for operators and for nodes themselves (API.md): an organization's
API key can read fleet state but never register, drain or fail over a node.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.permissions import SAFE_METHODS, BasePermission

from agents.authentication import ApiKeyAuthentication
from agents.authentication_throttle import auth_failure_check, auth_failure_note

NODE_TOKEN_PREFIX = "node_"  # noqa: S105 (a marker, not a secret)


@dataclass(frozen=True)
class FleetPrincipal:
    """A node (node token) or a staff user (session) acting on the fleet."""

    kind: str  # "node" or "staff"
    user: object | None = None

    @property
    def key(self) -> str:
        return f"staff:{self.user.pk}" if self.user is not None else "node"


class NodeTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer node_<secret>`` with the shared ORCHESTRATOR_NODE_TOKEN."""

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        parts = header.split()
        if len(parts) != 2 or parts[0].lower() != "bearer":
            return None
        if not parts[1].startswith(NODE_TOKEN_PREFIX):
            return None
        auth_failure_check(request)
        expected = settings.ORCHESTRATOR_NODE_TOKEN
        if not expected or not hmac.compare_digest(parts[1].encode(), expected.encode()):
            auth_failure_note(request)
            raise exceptions.AuthenticationFailed("Invalid node token.")
        return None, FleetPrincipal(kind="node")

    def authenticate_header(self, request) -> str:
        return "Bearer"


class StaffSessionAuthentication(SessionAuthentication):
    """An admin's session, without naming an organization: the fleet is not per tenant."""

    def authenticate(self, request):
        result = super().authenticate(request)
        if result is None:
            return None
        user, _ = result
        if not user.is_staff:
            return None  # an ordinary member: let the API-key path or 401/403 decide
        return user, FleetPrincipal(kind="staff", user=user)


class NodeTokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "orchestration.api.fleet_auth.NodeTokenAuthentication"
    name = "nodeToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "The fleet's node token (ORCHESTRATOR_NODE_TOKEN): `Bearer node_...`.",
        }


class StaffSessionAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "orchestration.api.fleet_auth.StaffSessionAuthentication"
    name = "staffSession"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "cookie", "name": "sessionid"}


FLEET_AUTHENTICATION = [NodeTokenAuthentication, StaffSessionAuthentication, ApiKeyAuthentication]


class FleetPermission(BasePermission):
    """Reads: any authenticated caller. Writes: a node or staff only."""

    message = "Only nodes and operators may change the fleet."

    def has_permission(self, request, view) -> bool:
        if request.auth is None:
            return False
        if request.method in SAFE_METHODS and not getattr(view, "fleet_write", False):
            return True
        return isinstance(request.auth, FleetPrincipal)


class FleetViewMixin:
    authentication_classes = FLEET_AUTHENTICATION
    permission_classes = [FleetPermission]
    # Set on views whose safe methods still change the fleet (none today).
    fleet_write = False
