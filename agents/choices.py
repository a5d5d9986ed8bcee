from __future__ import annotations

from django.db import models


class MemberRole(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    OPERATOR = "operator", "Operator"
    VIEWER = "viewer", "Viewer"


class MemberStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    INVITED = "invited", "Invited"
    SUSPENDED = "suspended", "Suspended"


class AgentKind(models.TextChoices):
    COPILOT = "COPILOT", "Copilot"
    WORKFLOW = "WORKFLOW", "Workflow"
    ANALYST = "ANALYST", "Analyst"


class AgentStatus(models.TextChoices):
    DRAFT = "DRAFT", "Draft"
    ACTIVE = "ACTIVE", "Active"
    PAUSED = "PAUSED", "Paused"
    DISABLED = "DISABLED", "Disabled"


class DatasetKind(models.TextChoices):
    DOCUMENTS = "documents", "Documents"
    FAQ = "faq", "FAQ"
    ANALYTICS = "analytics", "Analytics"


class Scope(models.TextChoices):
    """What a principal may do. Roles grant scopes; API keys carry them."""

    RUNS_READ = "runs:read", "Read runs"
    RUNS_WRITE = "runs:write", "Run agents, cancel and retry runs"
    AGENTS_READ = "agents:read", "Read agents, tools and datasets"
    AGENTS_WRITE = "agents:write", "Create and edit agents, tools and datasets"


ROLE_SCOPES: dict[str, frozenset[str]] = {
    MemberRole.VIEWER: frozenset({Scope.RUNS_READ, Scope.AGENTS_READ}),
    MemberRole.OPERATOR: frozenset({Scope.RUNS_READ, Scope.AGENTS_READ, Scope.RUNS_WRITE}),
    MemberRole.ADMIN: frozenset(Scope.values),
    MemberRole.OWNER: frozenset(Scope.values),
}

DEFAULT_API_KEY_SCOPES = [Scope.RUNS_READ, Scope.RUNS_WRITE, Scope.AGENTS_READ]
