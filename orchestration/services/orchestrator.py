"""orchestrate(): DESIGN.md's run lifecycle, one code path for sync and async runs.

1 resolve the agent -> 2 the caller is already authenticated (organization from the
credential) -> 3 idempotency -> 4 rate limit -> 5 the run's row (PENDING; a sync run's row
is inserted already claimed by this node, RUNNING) -> 6 execute now (sync) or enqueue on
commit (async) -> 7 run_execute(): claim (async), circuit, handler with timeout and retry,
record, finish with a fenced UPDATE.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, transaction

from agents.principal import Principal
from orchestration import bus
from orchestration.choices import EventType
from orchestration.errors import OrchestrationError
from orchestration.observability import metrics
from orchestration.policies import policy_store
from orchestration.services.config import agent_policy_live
from orchestration.services.dispatch import run_create_routed, run_enqueue
from orchestration.services.envelope import failure_envelope, run_envelope
from orchestration.services.execution import run_execute, sync_claim
from orchestration.services.resolution import (
    agent_effective_config,
    agent_resolve,
    dataset_resolve,
    definitions_forget,
)
from runs import services as run_services
from runs.choices import ACTIVE_RUN_STATES, RunMode
from runs.models import AgentRun

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrchestrateCommand:
    intent: str
    agent: str | None = None
    payload: Any = None
    context: dict = field(default_factory=dict)
    mode: str = RunMode.SYNC
    dataset_id: str | None = None
    objective: str = ""
    idempotency_key: str | None = None
    retry_of: AgentRun | None = None


@dataclass
class OrchestrateResult:
    http_status: int
    body: dict
    headers: dict = field(default_factory=dict)
    run: AgentRun | None = None


def _retry_after(seconds: float) -> dict:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def _error_result(
    exc: OrchestrationError, command: OrchestrateCommand, run=None
) -> OrchestrateResult:
    headers = _retry_after(exc.retry_after_s) if exc.retry_after_s is not None else {}
    body = failure_envelope(
        code=exc.code,
        message=exc.message,
        details=exc.details,
        agent=exc.agent or command.agent,
        intent=command.intent,
        run_id=run.pk if run is not None else None,
    )
    return OrchestrateResult(exc.http_status, body, headers, run)


def orchestrate(
    command: OrchestrateCommand,
    principal: Principal,
    *,
    _confirmed: bool = False,
    _decided: tuple | None = None,
) -> OrchestrateResult:
    organization = principal.organization
    store = policy_store()
    # The definitions this process keeps are used at once, their version read with the
    # rate-limit decision (one round trip for both); should it have moved, the request
    # starts again from definitions read afresh. Not for an idempotent request: its replay
    # check comes before the decision.
    unconfirmed = store.shared and not _confirmed and not command.idempotency_key
    try:
        agent = agent_resolve(
            organization=organization,
            intent=command.intent,
            agent_ref=command.agent,
            unconfirmed=unconfirmed,
        )
        dataset = dataset_resolve(organization=organization, reference=command.dataset_id)
    except OrchestrationError as exc:
        if unconfirmed:  # perhaps from definitions changed meanwhile: ask again, confirmed
            return orchestrate(command, principal, _confirmed=True)
        return _error_result(exc, command)
    pending_version = getattr(agent, "definitions_unconfirmed", None)

    fingerprint = run_services.input_hash(
        {
            "agent": str(agent.pk),
            "intent": command.intent,
            "payload": command.payload,
            "objective": command.objective,
            "dataset": str(dataset.pk) if dataset else None,
            "mode": command.mode,
        }
    )
    if command.idempotency_key:
        existing = AgentRun.objects.filter(
            organization=organization, idempotency_key=command.idempotency_key
        ).first()
        if existing is not None:
            return _replay(existing, fingerprint, agent.name, command)

    config = agent_effective_config(agent)
    policy = agent_policy_live(config)
    decided_on = (agent.pk, policy.rate_limit, policy.circuit)
    if _decided is not None and _decided[0] == decided_on:
        # Decided a moment ago on definitions since moved, for the same agent and limits.
        decision = _decided[1]
    else:
        decision = store.rate_limit(
            keys=[
                ("organization", f"rl:{organization.pk}:{agent.pk}"),
                ("principal", f"rl:{principal.key}:{agent.pk}"),
            ],
            limit=policy.rate_limit,
            # A sync run calls the agent at once: read its circuit in the same round trip.
            circuit_key=str(agent.pk) if command.mode == RunMode.SYNC else None,
            circuit=policy.circuit,
            definitions_version=pending_version is not None,
        )
    if pending_version is not None and decision.definitions_version != pending_version:
        # The definitions moved since this process read them (or the store cannot say):
        # nothing was done on them but this decision. The request starts again from them;
        # the decision stands if it was about the same agent under the same limits.
        definitions_forget(organization.pk, command.intent)
        return orchestrate(command, principal, _confirmed=True, _decided=(decided_on, decision))
    if not decision.allowed:
        metrics.rate_limit_observe(organization=organization, agent=agent, scope=decision.scope)
        if getattr(decision, "sample_event", False):
            # Sampled by the store (one per key per window), so an attack cannot flood the log.
            bus.publish(
                EventType.RATE_LIMITED,
                {
                    "scope": decision.scope,
                    "limit": decision.limit,
                    "intent": command.intent,
                    "principal": principal.key,
                },
                organization=organization,
                agent=agent,
            )
        return _error_result(
            OrchestrationError(
                "RATE_LIMITED",
                f"Over the limit of {decision.limit} requests per {policy.rate_limit.window_s:g} s"
                f" for this {decision.scope}.",
                details={
                    "limit": decision.limit,
                    "windowS": policy.rate_limit.window_s,
                    "scope": decision.scope,
                },
                retry_after_s=decision.retry_after_s,
                agent=agent.name,
            ),
            command,
        )

    meta = {
        "context": command.context or {},
        "principal": principal.key,
    }
    create = dict(
        organization=organization,
        agent=agent,
        intent=command.intent,
        input=command.payload,
        mode=command.mode,
        user=principal.user,
        dataset=dataset,
        objective=command.objective,
        meta=meta,
        idempotency_key=command.idempotency_key,
        retry_of=command.retry_of,
        request_fingerprint=fingerprint,
    )
    circuit_permit = decision.circuit
    route = None
    if command.mode != RunMode.ASYNC:
        # Executed here and now: the row is inserted already claimed by this node.
        create.update(sync_claim())

    def insert():
        nonlocal route
        if command.mode == RunMode.ASYNC:
            run, route = run_create_routed(**create)
            return run
        return run_services.run_create(**create)

    try:
        if transaction.get_connection().in_atomic_block:
            # Inside the caller's transaction: a savepoint keeps it usable after a conflict.
            with transaction.atomic():
                run = insert()
        else:
            # Committed on its own: no BEGIN / COMMIT round trips.
            run = insert()
        if route is not None:
            # Sent once the row is committed (at once outside a transaction).
            run_enqueue(run, total_timeout_s=policy.total_timeout_s, decision=route)
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key inserted first.
        existing = AgentRun.objects.filter(
            organization=organization, idempotency_key=command.idempotency_key
        ).first()
        if existing is None:
            raise
        return _replay(existing, fingerprint, agent.name, command)

    run.agent = agent
    run.dataset = dataset
    if command.mode == RunMode.ASYNC:
        status, body = run_envelope(run, agent_name=agent.name, accepted=True)
        return OrchestrateResult(status, body, {}, run)

    run_execute(run=run, config=config, claimed=True, circuit_permit=circuit_permit)
    status, body = run_envelope(run, agent_name=agent.name)
    headers = {}
    if run.error_code == "CIRCUIT_OPEN":
        headers = _retry_after((run.meta or {}).get("retryAfterS", 1))
    return OrchestrateResult(status, body, headers, run)


def _replay(existing: AgentRun, fingerprint: str, agent_name: str, command) -> OrchestrateResult:
    if existing.input_hash != fingerprint:
        return _error_result(
            OrchestrationError(
                "IDEMPOTENCY_CONFLICT",
                "This Idempotency-Key was used with a different request.",
                agent=agent_name,
            ),
            command,
            run=existing,
        )
    mode = (existing.meta or {}).get("mode", RunMode.SYNC)
    if mode == RunMode.ASYNC:
        status, body = run_envelope(existing, agent_name=agent_name, accepted=True)
        return OrchestrateResult(status, body, {}, existing)
    if existing.status in ACTIVE_RUN_STATES:
        return _error_result(
            OrchestrationError(
                "IDEMPOTENCY_IN_PROGRESS",
                "The first request with this Idempotency-Key is still being processed.",
                agent=agent_name,
                retry_after_s=1,
            ),
            command,
            run=existing,
        )
    status, body = run_envelope(existing, agent_name=agent_name)
    return OrchestrateResult(status, body, {}, existing)
