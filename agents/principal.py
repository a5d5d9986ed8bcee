"""Who is calling and for which organization, whatever the credential."""

from __future__ import annotations

from dataclasses import dataclass, field

from agents.models import ApiKey, Organization


@dataclass(frozen=True)
class Principal:
    organization: Organization
    scopes: frozenset[str]
    user: object | None = None  # a Django user for session callers
    api_key: ApiKey | None = None
    role: str = ""
    extra: dict = field(default_factory=dict)
    # For callers that are neither a user nor a key (the command line), which would
    # otherwise all share the meaningless identity "user:".
    principal_key: str = ""

    @property
    def key(self) -> str:
        """A stable identity for per-principal limits and audit: 'user:<id>' or 'key:<id>'."""
        if self.principal_key:
            return self.principal_key
        if self.api_key is not None:
            return f"key:{self.api_key.pk}"
        return f"user:{getattr(self.user, 'pk', '')}"

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


class ApiKeyUser:
    """The request.user of a call made with an API key: authenticated, never staff."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False
    pk = None
    id = None

    def __init__(self, api_key: ApiKey) -> None:
        self.api_key = api_key

    def __str__(self) -> str:
        return f"api-key:{self.api_key.prefix}"

    def get_username(self) -> str:
        return str(self)
