"""Writes and business rules of the agents app: tenancy, API keys, definitions."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.text import slugify

from agents.choices import DEFAULT_API_KEY_SCOPES, AgentStatus, MemberRole, Scope
from agents.handlers import registry
from agents.models import Agent, AgentCapability, ApiKey, Organization, OrganizationMember
from agents.signals import definitions_changed_send

# last_used_at is bookkeeping, not an audit log: write it at most this often per key.
API_KEY_TOUCH_INTERVAL = timedelta(minutes=1)


class InvalidScopes(ValueError):
    pass


@dataclass(frozen=True)
class IssuedApiKey:
    api_key: ApiKey
    raw_key: str


def validate_scopes(scopes: list[str]) -> list[str]:
    unknown = sorted(set(scopes) - set(Scope.values))
    if unknown:
        raise InvalidScopes(
            f"unknown scopes: {', '.join(unknown)}; known: {', '.join(Scope.values)}"
        )
    return sorted(set(scopes))


@transaction.atomic
def api_key_create(
    *,
    organization: Organization,
    name: str,
    scopes: list[str] | None = None,
    created_by=None,
    expires_at: datetime | None = None,
) -> IssuedApiKey:
    """Issue a key. The raw key is returned once and never stored."""
    scopes = validate_scopes(scopes if scopes is not None else list(DEFAULT_API_KEY_SCOPES))
    prefix = secrets.token_hex(6)
    raw_key = f"{ApiKey.KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    api_key = ApiKey.objects.create(
        organization=organization,
        name=name,
        prefix=prefix,
        key_hash=ApiKey.hash_key(raw_key),
        scopes=scopes,
        created_by=created_by,
        expires_at=expires_at,
    )
    return IssuedApiKey(api_key=api_key, raw_key=raw_key)


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at", "updated_at"])
    return api_key


def api_key_touch(*, api_key: ApiKey, now: datetime | None = None) -> None:
    """Record use, at most once per interval, with one conditional UPDATE and no read."""
    now = now or timezone.now()
    if api_key.last_used_at is not None and now - api_key.last_used_at < API_KEY_TOUCH_INTERVAL:
        return
    ApiKey.objects.filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - API_KEY_TOUCH_INTERVAL),
        pk=api_key.pk,
    ).update(last_used_at=now)
    api_key.last_used_at = now


@transaction.atomic
def organization_create(*, slug: str, name: str, plan: str = "starter") -> Organization:
    return Organization.objects.create(slug=slug, name=name, plan=plan)


@transaction.atomic
def member_add(
    *, organization: Organization, user, role: str = MemberRole.VIEWER
) -> OrganizationMember:
    member, _ = OrganizationMember.objects.update_or_create(
        organization=organization, user=user, defaults={"role": role}
    )
    return member


def agent_set_intents(*, agent: Agent, intents: list[str]) -> None:
    """Make the agent's capabilities exactly these intents (keeping existing rows' config)."""
    wanted = list(dict.fromkeys(intents))
    agent.capabilities.exclude(name__in=wanted).delete()
    existing = set(agent.capabilities.values_list("name", flat=True))
    created = AgentCapability.objects.bulk_create(
        [AgentCapability(agent=agent, name=name) for name in wanted if name not in existing]
    )
    if created:  # bulk_create sends no post_save
        definitions_changed_send(AgentCapability)


@transaction.atomic
def agent_create(
    *, organization: Organization, intents: list[str] | None = None, **fields
) -> Agent:
    if not fields.get("slug"):
        fields["slug"] = slugify(fields["name"])
    agent = Agent.objects.create(organization=organization, **fields)
    agent_set_intents(agent=agent, intents=intents or [])
    return agent


@transaction.atomic
def agent_update(*, agent: Agent, intents: list[str] | None = None, **fields) -> Agent:
    for name, value in fields.items():
        setattr(agent, name, value)
    agent.save()
    if intents is not None:
        agent_set_intents(agent=agent, intents=intents)
    return agent


def agent_set_status(*, agents: QuerySet[Agent] | Iterable[Agent], status: str) -> int:
    """Move agents to a status in one UPDATE; returns how many actually changed."""
    if status not in AgentStatus.values:
        raise ValueError(f"unknown agent status {status!r}; known: {', '.join(AgentStatus.values)}")
    if isinstance(agents, QuerySet):
        agent_ids = list(agents.values_list("pk", flat=True))
    else:
        agent_ids = [agent.pk for agent in agents]
    # update() skips auto_now, so updated_at is set by hand.
    changed = (
        Agent.objects.filter(pk__in=agent_ids)
        .exclude(status=status)
        .update(status=status, updated_at=timezone.now())
    )
    if changed:  # update() sends no post_save
        definitions_changed_send(Agent)
    return changed


@dataclass(frozen=True)
class DefinitionSyncResult:
    created: list[str]
    unchanged: list[str]


@transaction.atomic
def agent_definitions_sync(*, organization: Organization) -> DefinitionSyncResult:
    """Seed the code-declared definitions into an organization.

    Creates the definitions and capabilities that are missing; an existing definition is
    left exactly as it is, because its status, config and intents may be an admin's edit.
    A definition whose handler is registered starts ACTIVE; one without starts DRAFT.
    """
    existing = set(Agent.objects.filter(organization=organization).values_list("name", flat=True))
    created, unchanged = [], []
    for definition in registry.definitions():
        if definition.name in existing:
            unchanged.append(definition.name)
            continue
        agent_create(
            organization=organization,
            name=definition.name,
            slug=slugify(definition.name),
            kind=definition.kind,
            version=definition.version,
            owner_team=definition.owner_team,
            description=definition.description,
            handler=definition.handler,
            config=dict(definition.default_config or {}),
            status=(
                AgentStatus.ACTIVE
                if registry.is_registered(definition.handler)
                else AgentStatus.DRAFT
            ),
            intents=list(definition.intents),
        )
        created.append(definition.name)
    return DefinitionSyncResult(created=created, unchanged=unchanged)
