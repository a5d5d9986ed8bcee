"""orchestrate(): DESIGN.md's run lifecycle, one code path for sync and async runs.

1 resolve the agent -> 2 the caller is already authenticated (organization from the
credential) -> 3 idempotency -> 4 rate limit -> 5 the PENDING row -> 6 execute now
(sync) or enqueue on commit (async) -> 7 run_execute(): claim, circuit, handler with
timeout and retry, record, finish with a fenced UPDATE.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from agents.handlers import HandlerRequest, registry
from agents.principal import Principal
from orchestration.errors import OrchestrationError
from orchestration.policies import agent_policy, policy_store
from orchestration.services.envelope import failure_envelope, run_envelope
from orchestration.services.executor import handler_invoke
from orchestration.services.resolution import (
    agent_effective_config,
    agent_resolve,
    dataset_resolve,
)
from runs import services as run_services
from runs.choices import ACTIVE_RUN_STATES, RunMode, RunStatus
from runs.context import RunContext
from runs.models import AgentRun
from runs.recorder import recording_flush
from runs.tokens import run_token_issue

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


def orchestrate(command: OrchestrateCommand, principal: Principal) -> OrchestrateResult:
    organization = principal.organization
    try:
        agent = agent_resolve(
            organization=organization, intent=command.intent, agent_ref=command.agent
        )
        dataset = dataset_resolve(organization=organization, reference=command.dataset_id)
    except OrchestrationError as exc:
        return _error_result(exc, command)

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
    policy = agent_policy(config)
    decision = policy_store().rate_limit(
        keys=[
            ("organization", f"rl:{organization.pk}:{agent.pk}"),
            ("principal", f"rl:{principal.key}:{agent.pk}"),
        ],
        limit=policy.rate_limit,
    )
    if not decision.allowed:
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
    try:
        with transaction.atomic():
            run = run_services.run_create(
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
                request_fingerprint=fingerprint,
            )
            if command.mode == RunMode.ASYNC:
                run_enqueue(run)
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

    run_execute(run=run, config=config)
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


def run_enqueue(run: AgentRun) -> None:
    """Dispatch after the PENDING row is committed, never before (the worker must find it)."""
    from orchestration.tasks import execute_run

    run_id = str(run.pk)
    queue = settings.RUN_DEFAULT_QUEUE
    transaction.on_commit(lambda: execute_run.apply_async(args=[run_id], queue=queue))


def _callback_url(run: AgentRun) -> str:
    return f"{settings.PUBLIC_BASE_URL.rstrip('/')}/api/runs/{run.pk}/"


def run_execute(*, run: AgentRun, config: dict | None = None, node_id: str | None = None) -> bool:
    """Execute a PENDING run to its end. Returns False when another worker holds it."""
    node_id = node_id or settings.ORCHESTRATOR_NODE_ID
    if not run_services.run_claim(
        run=run, node_id=node_id, lease_seconds=settings.RUN_LEASE_SECONDS
    ):
        run.refresh_from_db()
        return False
    agent = run.agent
    if config is None:
        config = agent_effective_config(agent)
    policy = agent_policy(config)
    queue_wait_ms = None
    if (run.meta or {}).get("mode") == RunMode.ASYNC and run.queued_at:
        queue_wait_ms = max(0, int((run.started_at - run.queued_at).total_seconds() * 1000))

    def make_context(attempt: int) -> RunContext:
        return RunContext(
            run_id=str(run.pk),
            organization=run.organization,
            agent=agent,
            config=config,
            attempt=attempt,
            dataset=run.dataset,
            callback_url=_callback_url(run),
            run_token=run_token_issue(run_id=run.pk, attempt=run.attempt),
            cancel_probe=lambda: run_services.run_cancel_requested(run.pk),
        )

    if not registry.is_registered(agent.handler):
        invocation = None
        outcome = run_services.RunOutcome(
            status=RunStatus.FAILED,
            error_code="AGENT_NOT_REGISTERED",
            error_message=f"{agent.name} has no registered handler in this process.",
        )
    else:
        request = HandlerRequest(
            run_id=str(run.pk),
            agent=agent.name,
            intent=run.intent,
            payload=run.input,
            organization=run.organization.slug,
            attempt=1,
            objective=run.objective,
            dataset_id=str(run.dataset_id) if run.dataset_id else None,
            user_id=str(run.user_id) if run.user_id else None,
            context=(run.meta or {}).get("context", {}),
        )
        invocation = handler_invoke(
            handler=registry.get(agent.handler),
            request=request,
            make_context=make_context,
            policy=policy,
            store=policy_store(),
            agent_key=str(agent.pk),
            is_cancelled=lambda: run_services.run_cancel_requested(run.pk),
        )
        if invocation.status == "success":
            outcome = run_services.RunOutcome(status=RunStatus.SUCCESS, output=invocation.output)
        elif invocation.status == "cancelled":
            outcome = run_services.RunOutcome(status=RunStatus.CANCELLED)
        else:
            outcome = run_services.RunOutcome(
                status=RunStatus.FAILED,
                error_code=invocation.error_code or "AGENT_EXECUTION_FAILED",
                error_message=invocation.error_message,
            )

    now = timezone.now()
    duration_ms = max(0, int((now - run.started_at).total_seconds() * 1000))
    attempts = invocation.attempts if invocation else 0
    retries = invocation.retries if invocation else 0
    summary: dict[str, Any] = {
        "intent": run.intent,
        "agent": agent.name,
        "responseOk": outcome.status == RunStatus.SUCCESS,
        "durationMs": duration_ms,
        "attempts": attempts,
        "retries": retries,
    }
    if queue_wait_ms is not None:
        summary["queueWaitMs"] = queue_wait_ms
    if outcome.status == RunStatus.FAILED:
        summary["error"] = {"code": outcome.error_code, "message": outcome.error_message[:500]}
    meta = dict(run.meta or {})
    if invocation is not None:
        meta["policies"] = invocation.decisions
        if invocation.error_details is not None and outcome.status == RunStatus.FAILED:
            meta["errorDetails"] = invocation.error_details
        if invocation.retry_after_s:
            meta["retryAfterS"] = invocation.retry_after_s

    standard = [
        ("latency_ms", float(duration_ms), {}),
        ("attempts", float(attempts), {}),
        ("retries", float(retries), {}),
    ]
    if queue_wait_ms is not None:
        standard.append(("queue_wait_ms", float(queue_wait_ms), {}))
    if outcome.status == RunStatus.FAILED:
        standard.append(("error", 1.0, {"code": outcome.error_code}))

    with transaction.atomic():
        written = run_services.run_finish(
            run=run, outcome=outcome, metrics=summary, meta=meta, now=now
        )
        if written:
            recording_flush(
                run=run,
                contexts=invocation.contexts if invocation else [],
                extra_metrics=standard,
            )
    if not written:
        # The attempt was fenced off (the run was reassigned or ended elsewhere): discard.
        logger.warning("stale completion of run %s attempt %s discarded", run.pk, run.attempt)
        run.refresh_from_db()
    return True
