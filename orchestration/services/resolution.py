"""Step 1 of the lifecycle: which agent of the caller's organization serves this request."""

from __future__ import annotations

import functools
import time
import uuid

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q

from agents.choices import AgentStatus
from agents.handlers import registry
from agents.models import Agent, AgentCapability, AgentConfig, Dataset
from orchestration.errors import OrchestrationError
from orchestration.policies import policy_store
from runs.sql import json_object, model_columns, prepared_cursor, row_instance


def _agent_by_reference(organization, reference: str) -> Agent | None:
    return (
        Agent.objects.filter(organization=organization)
        .filter(Q(slug=reference) | Q(name=reference))
        .prefetch_related("config_entries")
        .first()
    )


@functools.cache
def _servers_sql() -> str:
    columns = model_columns(Agent)[0]
    # Table and column names come from the models; values are parameters.
    return (
        f"SELECT {columns}, (SELECT jsonb_object_agg(c.key, c.value) FROM "  # noqa: S608
        f'"{AgentConfig._meta.db_table}" c WHERE c.agent_id = "{Agent._meta.db_table}".id)'
        f' AS config_rows FROM "{AgentCapability._meta.db_table}" cap '
        f'JOIN "{Agent._meta.db_table}" ON "{Agent._meta.db_table}".id = cap.agent_id '
        f'WHERE "{Agent._meta.db_table}".organization_id = %s AND cap.name = %s'
    )


# Definitions change rarely and every request reads them, so each process keeps the rows
# the query below returned, per (organization, intent), and uses them again while the
# definitions' version in the shared policy store is the one they were read at: no query,
# and the version is read with the request's rate-limit decision (orchestrate, unconfirmed
# rows below) or by a GET of its own. Every change of an agent, its intents or its config
# rows moves the version (agents.signals.definitions_changed -> definitions_invalidate), at
# once and again once committed, so another process reads afresh on its next request. The
# version is read before the query, so rows read before a change never pass for rows read
# after it; rows are kept AGENT_RESOLUTION_CACHE_SECONDS at most, a bound should a version
# move be lost (Redis unreachable at that moment). Only with a shared (Redis) store: a
# process-local store cannot hear other processes' changes. Raw rows are kept (the JSON
# still text), so every request builds its own instances and no run can alter another's.
_rows_cache: dict[tuple, tuple[int, float, list[tuple]]] = {}
_ROWS_CACHE_MAX = 10_000


def definitions_invalidate(**_) -> None:
    """agents.signals.definitions_changed: forget this process's rows, move the version."""
    _rows_cache.clear()
    store = policy_store()
    if store.shared:
        store.definitions_bump()
        # Again once the change is visible to others: one that read the rows between the
        # first move and the commit cached them under a version this one retires.
        transaction.on_commit(store.definitions_bump)


def _server_rows(organization_id, intent: str, *, unconfirmed: bool = False):
    """(rows, the version they were read at if the caller must still confirm it, else None).

    ``unconfirmed``: rows this process keeps for the pair (within the TTL) are returned
    without reading the definitions' version first: the caller confirms it in a round
    trip of its own (orchestrate: with the rate-limit decision) and resolves again if it
    moved."""
    ttl = settings.AGENT_RESOLUTION_CACHE_SECONDS
    store = policy_store() if ttl > 0 else None
    if unconfirmed and store is not None and store.shared:
        entry = _rows_cache.get((organization_id, intent))
        if entry is not None and time.monotonic() - entry[1] < ttl:
            return entry[2], entry[0]
    version = store.definitions_version() if store is not None and store.shared else None
    if version is not None:
        entry = _rows_cache.get((organization_id, intent))
        now = time.monotonic()
        if entry is not None and entry[0] == version and now - entry[1] < ttl:
            return entry[2], None
    with prepared_cursor() as cursor:
        cursor.execute(_servers_sql(), [organization_id, intent])
        rows = cursor.fetchall()
    if version is not None:
        if len(_rows_cache) >= _ROWS_CACHE_MAX:
            _rows_cache.clear()
        _rows_cache[(organization_id, intent)] = (version, now, rows)
    return rows, None


def definitions_forget(organization_id, intent: str) -> None:
    """Drop this process's rows for the pair (their version moved): read them again."""
    _rows_cache.pop((organization_id, intent), None)


def _servers(organization, intent: str, *, unconfirmed: bool = False):
    """Every agent of the organization that declares this intent, any status, with its
    config rows: one query, or none (_rows_cache). On PostgreSQL a raw query (the config
    rows aggregated into one JSON column) rather than the ORM's join plus prefetch, which
    cost most of a run's CPU. With the version the rows must still be confirmed at
    (_server_rows), or None."""
    if connection.vendor != "postgresql":
        return [
            capability.agent
            for capability in AgentCapability.objects.filter(
                agent__organization=organization, name=intent
            )
            .select_related("agent")
            .prefetch_related("agent__config_entries")
        ], None
    # The rows become models directly (runs.sql): Agent.objects.raw()
    # costs several times more per call for the same instances.
    rows, version = _server_rows(organization.pk, intent, unconfirmed=unconfirmed)
    agents = []
    for row in rows:
        agent = row_instance(Agent, row)
        agent.config_rows = json_object(row[-1])
        agents.append(agent)
    return agents, version


def agent_resolve(
    *, organization, intent: str, agent_ref: str | None, unconfirmed: bool = False
) -> Agent:
    """The agent that serves the request, or OrchestrationError.

    ``unconfirmed``: from this process's rows without reading the definitions' version
    first (_server_rows); the agent's ``definitions_unconfirmed`` is then the version its
    rows were read at, which the caller must find unchanged in the store before acting on
    the answer (None: confirmed already). An error found from such rows is not final
    either: the caller resolves again, confirmed.
    """
    servers, version = _servers(organization, intent, unconfirmed=unconfirmed)
    active = [a for a in servers if a.status == AgentStatus.ACTIVE]

    if agent_ref:
        # The agent named is usually one that serves the intent: no query for it then.
        named = [a for a in servers if agent_ref in (a.slug, a.name)]
        agent = named[0] if len(named) == 1 else _agent_by_reference(organization, agent_ref)
        if agent is None:
            raise OrchestrationError(
                "AGENT_NOT_REGISTERED", f"No agent named {agent_ref!r} is registered."
            )
        if agent.status != AgentStatus.ACTIVE:
            raise OrchestrationError(
                "AGENT_DISABLED", f"{agent.name} is {agent.status}.", agent=agent.name
            )
        if active and agent.pk not in {a.pk for a in active}:
            raise OrchestrationError(
                "INTENT_AGENT_MISMATCH",
                f"Intent {intent!r} is served by {', '.join(sorted(a.name for a in active))},"
                f" not {agent.name}.",
                details={"servedBy": sorted(a.name for a in active)},
                agent=agent.name,
            )
    else:
        if not active:
            if servers:
                names = ", ".join(sorted(a.name for a in servers))
                raise OrchestrationError(
                    "AGENT_DISABLED",
                    f"Intent {intent!r} is served only by disabled agents: {names}.",
                )
            raise OrchestrationError(
                "AGENT_REQUIRED", f"Unknown intent {intent!r}: name the agent to run."
            )
        if len(active) > 1:
            raise OrchestrationError(
                "AGENT_REQUIRED",
                f"Several agents serve {intent!r}; name one.",
                details={"candidates": sorted(a.name for a in active)},
            )
        agent = active[0]

    if not registry.is_registered(agent.handler):
        raise OrchestrationError(
            "AGENT_NOT_REGISTERED",
            f"{agent.name} has no registered handler"
            + (f" (handler {agent.handler!r} is unknown)." if agent.handler else "."),
            agent=agent.name,
        )
    agent.definitions_unconfirmed = version
    return agent


def agent_effective_config(agent: Agent) -> dict:
    """The agent's config JSON, overlaid by its key/value config rows (admin-edited)."""
    config = dict(agent.config or {})
    rows = getattr(agent, "config_rows", None)  # set by agent_resolve's query
    if rows is not None:
        config.update(rows)
        return config
    for entry in agent.config_entries.all():
        config[entry.key] = entry.value
    return config


def dataset_resolve(*, organization, reference: str | None) -> Dataset | None:
    if not reference:
        return None
    datasets = Dataset.objects.filter(organization=organization)
    try:
        dataset = datasets.filter(pk=uuid.UUID(str(reference))).first()
    except ValueError:
        dataset = datasets.filter(slug=reference).first()
    if dataset is None:
        raise OrchestrationError(
            "INVALID_REQUEST",
            "Unknown dataset.",
            details={"datasetId": [f"No dataset {reference!r} in this organization."]},
        )
    return dataset
