"""Step 1 of the lifecycle: which agent of the caller's organization serves this request."""

from __future__ import annotations

import uuid

from django.db.models import Q

from agents.choices import AgentStatus
from agents.handlers import registry
from agents.models import Agent, AgentCapability, Dataset
from orchestration.errors import OrchestrationError


def _agent_by_reference(organization, reference: str) -> Agent | None:
    return (
        Agent.objects.filter(organization=organization)
        .filter(Q(slug=reference) | Q(name=reference))
        .prefetch_related("config_entries")
        .first()
    )


def agent_resolve(*, organization, intent: str, agent_ref: str | None) -> Agent:
    # One query: every agent of the organization that declares this intent, any status.
    servers = [
        capability.agent
        for capability in AgentCapability.objects.filter(
            agent__organization=organization, name=intent
        )
        .select_related("agent")
        .prefetch_related("agent__config_entries")
    ]
    active = [a for a in servers if a.status == AgentStatus.ACTIVE]

    if agent_ref:
        agent = _agent_by_reference(organization, agent_ref)
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
    return agent


def agent_effective_config(agent: Agent) -> dict:
    """The agent's config JSON, overlaid by its key/value config rows (admin-edited)."""
    config = dict(agent.config or {})
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
