"""DRF authentication: API keys for programs, sessions (plus X-Organization) for humans.

Both put a Principal in request.auth, so views and permissions see one shape.
"""

from __future__ import annotations

from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, SessionAuthentication

from agents.authentication_throttle import auth_failure_check, auth_failure_note
from agents.choices import ROLE_SCOPES, MemberRole, MemberStatus
from agents.models import ApiKey, Organization, OrganizationMember
from agents.principal import ApiKeyUser, Principal
from agents.services import api_key_touch

ORGANIZATION_HEADER = "HTTP_X_ORGANIZATION"


class ApiKeyAuthentication(BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        parts = header.split()
        if parts[0].lower() != self.keyword.lower():
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header.")
        raw_key = parts[1]
        pieces = raw_key.split("_", 2)
        if len(pieces) != 3 or pieces[0] != ApiKey.KEY_PREFIX:
            # Not one of ours (a run token, for instance): let another authenticator try.
            return None
        auth_failure_check(request)
        # No caching of keys: a revoked or expired key fails on the very next request.
        api_key = ApiKey.objects.select_related("organization").filter(prefix=pieces[1]).first()
        # Hash compare even on a miss would not hide much: prefixes are public.
        if api_key is None or not api_key.matches(raw_key):
            auth_failure_note(request)
            raise exceptions.AuthenticationFailed("Invalid API key.")
        now = timezone.now()
        if not api_key.is_usable(now):
            auth_failure_note(request)
            raise exceptions.AuthenticationFailed("API key revoked or expired.")
        api_key_touch(api_key=api_key, now=now)
        principal = Principal(
            organization=api_key.organization,
            scopes=frozenset(api_key.scopes),
            api_key=api_key,
        )
        return ApiKeyUser(api_key), principal

    def authenticate_header(self, request) -> str:
        return self.keyword


class OrganizationSessionAuthentication(SessionAuthentication):
    """Session login; the organization comes from X-Organization or the only membership."""

    def authenticate(self, request):
        result = super().authenticate(request)
        if result is None:
            return None
        user, _ = result
        slug = request.META.get(ORGANIZATION_HEADER, "").strip()
        memberships = OrganizationMember.objects.select_related("organization").filter(
            user=user, status=MemberStatus.ACTIVE
        )
        if slug:
            member = memberships.filter(organization__slug=slug).first()
            if member is None and user.is_superuser:
                organization = Organization.objects.filter(slug=slug).first()
                if organization is not None:
                    return user, Principal(
                        organization=organization,
                        scopes=ROLE_SCOPES[MemberRole.OWNER],
                        user=user,
                        role=MemberRole.OWNER,
                    )
            if member is None:
                raise exceptions.PermissionDenied(f"You are not a member of organization {slug!r}.")
        else:
            members = list(memberships[:2])
            if len(members) != 1:
                raise exceptions.PermissionDenied(
                    "Name the organization with the X-Organization header."
                )
            member = members[0]
        return user, Principal(
            organization=member.organization,
            scopes=member.scopes,
            user=user,
            role=member.role,
        )

    def authenticate_header(self, request) -> str:
        # Lets DRF answer 401 (not 403) to a request with no credentials at all.
        return 'Bearer realm="api"'
