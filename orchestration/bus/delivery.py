"""Messages on the bus delivered to agents as orchestrated runs.

A message of type T is a request with intent T: each recipient gets a run created by
orchestrate(), so it is resolved, rate limited, persisted, routed, retried and guarded
by the circuit breaker like any other run. An agent.message event records the delivery
and names the runs; each run carries the broadcast's id in its context, so either can
be found from the other.

This module runs orchestrate(), which publishes on the bus: it sits above the services
and the bus's core (orchestration.bus) imports nothing from here.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from agents.choices import AgentStatus, Scope
from agents.models import Agent, Organization
from agents.principal import Principal
from orchestration import bus
from orchestration.choices import EventType
from orchestration.errors import OrchestrationError
from orchestration.services.orchestrator import OrchestrateCommand, orchestrate
from runs.choices import RunMode
from runs.models import AgentRun

logger = logging.getLogger(__name__)

BUS_PRINCIPAL_KEY = "bus"


def bus_principal(organization: Organization) -> Principal:
    """Who a system message acts as: the organization itself, with every scope.

    Its own identity ("bus") gives it its own per-principal rate-limit window, so a
    flood of system messages cannot eat an API key's budget or the other way round.
    """
    return Principal(
        organization=organization,
        scopes=frozenset(Scope.values),
        principal_key=BUS_PRINCIPAL_KEY,
    )


def _deliver(
    *,
    agent: Agent,
    message_type: str,
    payload: Any,
    principal: Principal,
    context: dict,
) -> tuple[AgentRun | None, dict | None]:
    """One recipient: its accepted run, or why it was refused."""
    result = orchestrate(
        OrchestrateCommand(
            intent=message_type,
            agent=agent.slug,
            payload=payload,
            context=context,
            mode=RunMode.ASYNC,
        ),
        principal,
    )
    if result.run is not None and result.body.get("success"):
        return result.run, None
    error = result.body.get("error") or {}
    refusal = {
        "agent": agent.slug,
        "code": error.get("code", "ORCHESTRATION_FAILED"),
        "message": error.get("message", ""),
    }
    logger.info("bus message %s not delivered to %s: %s", message_type, agent.slug, refusal)
    return None, refusal


def _message_context(message_type: str, message_id: str, source: str | None) -> dict:
    return {"bus": {"messageId": message_id, "messageType": message_type, "source": source}}


def broadcast(
    organization: Organization,
    message_type: str,
    payload: Any = None,
    *,
    principal: Principal | None = None,
    source: str | None = None,
) -> list[AgentRun]:
    """Deliver to every ACTIVE agent of the organization with capability message_type.

    Returns the accepted runs (PENDING, queued for the workers). DRAFT, PAUSED and
    DISABLED agents get nothing; an agent the orchestrator refuses (rate limited, no
    handler) is named in the event's "refused" list instead.
    """
    principal = principal or bus_principal(organization)
    if principal.organization.pk != organization.pk:
        raise ValueError("a broadcast acts for the principal's own organization")
    recipients = list(
        Agent.objects.filter(
            organization=organization,
            status=AgentStatus.ACTIVE,
            capabilities__name=message_type,
        )
        .distinct()
        .order_by("slug")
    )
    message_id = str(uuid.uuid4())
    context = _message_context(message_type, message_id, source)
    runs: list[AgentRun] = []
    refused: list[dict] = []
    for agent in recipients:
        run, refusal = _deliver(
            agent=agent,
            message_type=message_type,
            payload=payload,
            principal=principal,
            context=context,
        )
        if run is not None:
            runs.append(run)
        else:
            refused.append(refusal)
    bus.publish(
        EventType.AGENT_MESSAGE,
        {
            "messageId": message_id,
            "messageType": message_type,
            "delivery": "broadcast",
            "source": source,
            "principal": principal.key,
            "agents": [run.agent.slug for run in runs],
            "runs": [str(run.pk) for run in runs],
            "refused": refused,
        },
        organization=organization,
    )
    return runs


def send(
    agent: Agent,
    message_type: str,
    payload: Any = None,
    *,
    principal: Principal | None = None,
    source: str | None = None,
) -> AgentRun:
    """Deliver to one agent; OrchestrationError (with the orchestrator's code) if refused."""
    organization = agent.organization
    principal = principal or bus_principal(organization)
    if principal.organization.pk != organization.pk:
        raise ValueError("a message goes to an agent of the principal's own organization")
    message_id = str(uuid.uuid4())
    run, refusal = _deliver(
        agent=agent,
        message_type=message_type,
        payload=payload,
        principal=principal,
        context=_message_context(message_type, message_id, source),
    )
    bus.publish(
        EventType.AGENT_MESSAGE,
        {
            "messageId": message_id,
            "messageType": message_type,
            "delivery": "send",
            "source": source,
            "principal": principal.key,
            "agents": [agent.slug] if run is not None else [],
            "runs": [str(run.pk)] if run is not None else [],
            "refused": [refusal] if refusal else [],
        },
        organization=organization,
        agent=agent,
        run=run,
    )
    if run is None:
        raise OrchestrationError(refusal["code"], refusal["message"], agent=agent.name)
    return run
