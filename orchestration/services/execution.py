"""Step 7 of the lifecycle: execute a PENDING run to its end (sync and async alike).

Claim with a conditional UPDATE, run the handler under the agent's policies, then
write the outcome with one UPDATE fenced on the attempt number; what the handler
recorded and the run's terminal event go in the same statement (runs.services.run_finish,
orchestration.bus.run_terminal_write).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.utils import timezone

from agents.handlers import HandlerRequest, registry
from orchestration import bus
from orchestration.choices import EventType
from orchestration.observability import metrics
from orchestration.observability.logging import run_log_bind, run_log_scope
from orchestration.policies import CircuitPermit, CircuitState, policy_store
from orchestration.services.config import agent_policy_live
from orchestration.services.executor import Invocation, handler_invoke
from orchestration.services.resolution import (
    agent_effective_config,
)
from orchestration.worker import runtime as node_runtime
from runs import services as run_services
from runs.choices import RunMode, RunStatus
from runs.context import RunContext
from runs.models import AgentRun
from runs.recorder import RunRecords
from runs.tokens import run_token_issue

logger = logging.getLogger(__name__)

CIRCUIT_EVENTS = {
    CircuitState.OPEN: EventType.CIRCUIT_OPENED,
    CircuitState.HALF_OPEN: EventType.CIRCUIT_HALF_OPEN,
    CircuitState.CLOSED: EventType.CIRCUIT_CLOSED,
}


def _callback_url(run: AgentRun) -> str:
    return f"{settings.PUBLIC_BASE_URL.rstrip('/')}/api/runs/{run.pk}/"


def sync_claim() -> dict:
    """run_create()'s arguments for a run this process executes at once (a sync run): the
    row is inserted already claimed by this node, so run_execute(claimed=True) skips the
    claim's UPDATE."""
    if settings.NODE_AUTOREGISTER:
        node_runtime.ensure_started()
    return {
        "claimed_by": settings.ORCHESTRATOR_NODE_ID,
        "lease_seconds": settings.RUN_LEASE_SECONDS,
    }


@run_log_scope
def run_execute(
    *,
    run: AgentRun,
    config: dict | None = None,
    node_id: str | None = None,
    claimed: bool = False,
    circuit_permit: CircuitPermit | None = None,
) -> bool:
    """Execute a PENDING run to its end. Returns False when another worker holds it.

    ``claimed``: the run was inserted already claimed by this node (sync_claim()).
    ``circuit_permit``: the circuit's answer read with the run's rate-limit decision, used
    for the first attempt instead of asking again.
    """
    node_id = node_id or settings.ORCHESTRATOR_NODE_ID
    if settings.NODE_AUTOREGISTER:
        # This process runs work, so it is a node: its heartbeat extends the run's lease.
        node_runtime.ensure_started()
    if not claimed and not run_services.run_claim(
        run=run, node_id=node_id, lease_seconds=settings.RUN_LEASE_SECONDS
    ):
        run.refresh_from_db()
        return False
    # This process's heartbeat extends the lease only while the run executes here.
    with node_runtime.executing(run.pk):
        return _run_execute_claimed(
            run=run, config=config, node_id=node_id, circuit_permit=circuit_permit
        )


def _run_execute_claimed(
    *, run: AgentRun, config: dict | None, node_id: str, circuit_permit: CircuitPermit | None
) -> bool:
    agent = run.agent
    run_log_bind(run=run, node_id=node_id)
    if config is None:
        config = agent_effective_config(agent)
    policy = agent_policy_live(config)
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
            run_token=functools.partial(run_token_issue, run_id=run.pk, attempt=run.attempt),
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
        try:
            invocation = handler_invoke(
                handler=registry.get(agent.handler),
                request=request,
                make_context=make_context,
                policy=policy,
                store=policy_store(),
                agent_key=str(agent.pk),
                is_cancelled=lambda: run_services.run_cancel_requested(run.pk),
                cancel_check_first=run.cancel_requested_at is not None,
                # A success is fenced on the row instead (finish below): no extra round trip.
                cancel_check_after_success=False,
                first_permit=circuit_permit,
            )
        except SoftTimeLimitExceeded:
            # The worker's backstop fired (the per-run deadline should have come first).
            invocation = Invocation(
                status="failed",
                error_code="AGENT_TIMEOUT",
                error_message="The run exceeded the worker's time limit.",
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

    def finish(outcome: run_services.RunOutcome) -> bool:
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

        # One statement (PostgreSQL): the fenced UPDATE, the records, the terminal event.
        return run_services.run_finish(
            run=run,
            outcome=outcome,
            metrics=summary,
            meta=meta,
            now=now,
            records=RunRecords(
                contexts=invocation.contexts if invocation else [], extra_metrics=standard
            ),
            # A success is written only if no cancellation was requested meanwhile.
            unless_cancel_requested=outcome.status == RunStatus.SUCCESS,
        )

    written = finish(outcome)
    if (
        not written
        and outcome.status == RunStatus.SUCCESS
        and run_services.run_cancel_recorded(run)
    ):
        # Cancelled while the handler was finishing: the run ends CANCELLED, output dropped.
        run.status, run.output = RunStatus.RUNNING, None
        outcome = run_services.RunOutcome(status=RunStatus.CANCELLED)
        written = finish(outcome)
    duration_ms = int(run.duration_ms or 0)
    if written:
        metrics.run_end_observe(
            run=run,
            agent=agent,
            status=outcome.status,
            duration_ms=duration_ms,
            contexts=invocation.contexts if invocation else [],
        )
    # A transition happened in the shared state whatever became of this attempt.
    if invocation is not None:
        for state in invocation.circuit_transitions:
            bus.publish(
                CIRCUIT_EVENTS[state],
                {"agent": agent.name, "state": state, "cause": str(run.pk)},
                organization=run.organization,
                agent=agent,
                run=run,
                node=node_id,
            )
    if not written:
        # The attempt was fenced off (the run was reassigned or ended elsewhere): discard.
        stale_attempt = run.attempt
        logger.warning("stale completion of run %s attempt %s discarded", run.pk, stale_attempt)
        run.refresh_from_db()
        bus.publish(
            EventType.RUN_STALE_COMPLETION,
            {
                "attempt": stale_attempt,
                "outcome": outcome.status,
                "errorCode": outcome.error_code or None,
                "currentAttempt": run.attempt,
                "currentStatus": run.status,
                "currentNode": run.node_id or None,
            },
            organization=run.organization,
            agent=agent,
            run=run,
            node=node_id,
        )
    return True
