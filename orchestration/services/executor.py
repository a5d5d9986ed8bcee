"""Calling a handler with the agent's policies: circuit check, timeout, retry with backoff.

The handler runs on a bounded pool of threads so the caller can stop waiting on
time: a sync request answers 504 AGENT_TIMEOUT at its deadline even if the
handler keeps running, and the handler sees ``ctx.cancelled``. Each attempt gets
its own RunContext (its own cancel flag); their records are merged afterwards.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import close_old_connections

from agents.handlers.base import HandlerError, HandlerRequest, RetryableError
from orchestration.policies import AgentPolicy, CircuitPermit, PolicyStore
from runs.context import RunContext

logger = logging.getLogger(__name__)

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _handler_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(
                    max_workers=getattr(settings, "HANDLER_THREADS", 16),
                    thread_name_prefix="agent-handler",
                )
    return _pool


class AttemptTimeout(Exception):
    pass


class CircuitRejected(Exception):
    def __init__(self, permit: CircuitPermit) -> None:
        super().__init__(f"circuit {permit.state}")
        self.permit = permit


@dataclass
class Invocation:
    """The outcome of calling a handler, with every attempt accounted for."""

    status: str  # "success" | "failed" | "cancelled"
    output: Any = None
    error_code: str = ""
    error_message: str = ""
    error_details: Any = None
    attempts: int = 0
    retries: int = 0
    timed_out: int = 0
    slow_calls: int = 0
    waited_ms: float = 0.0
    retry_after_s: float = 0.0
    circuit_transitions: list[str] = field(default_factory=list)
    contexts: list[RunContext] = field(default_factory=list)

    @property
    def decisions(self) -> list[dict]:
        """What the policies did to this run, for the run record."""
        notes: list[dict] = []
        if self.retries:
            notes.append(
                {"policy": "retry", "retried": self.retries, "waitedMs": round(self.waited_ms)}
            )
        if self.timed_out:
            notes.append({"policy": "timeout", "timedOutAttempts": self.timed_out})
        if self.slow_calls:
            notes.append({"policy": "circuit", "slowCalls": self.slow_calls})
        if self.error_code == "CIRCUIT_OPEN":
            notes.append({"policy": "circuit", "rejected": True, "retryAfterS": self.retry_after_s})
        for transition in self.circuit_transitions:
            notes.append({"policy": "circuit", "transition": transition})
        return notes


def _call_in_thread(handler, request: HandlerRequest, ctx: RunContext) -> Any:
    close_old_connections()
    try:
        with ctx.activate():
            output = handler.handle(request, ctx)
        # Fail inside the attempt if the answer cannot be stored.
        json.dumps(output)
        return output
    finally:
        close_old_connections()


def handler_invoke(
    *,
    handler,
    request: HandlerRequest,
    make_context,
    policy: AgentPolicy,
    store: PolicyStore,
    agent_key: str,
    is_cancelled,
    cancel_check_first: bool = True,
    cancel_check_after_success: bool = True,
    first_permit: CircuitPermit | None = None,
) -> Invocation:
    """Run the attempts of one run. ``make_context(attempt)`` builds each attempt's RunContext.

    ``cancel_check_first=False`` skips asking the shared store before the first attempt: for
    a run just claimed with no cancellation recorded on its row, a request can only come
    later, and is seen after the attempt (and by the handler through ``ctx.cancelled``).
    ``cancel_check_after_success=False`` leaves a success as it is: the caller's finish is
    fenced on the run's row recording no cancellation request instead (run_execute).
    ``first_permit``: the circuit's answer for the first attempt, read with the rate-limit
    decision a moment ago (RateDecision.circuit); later attempts acquire their own.
    """
    result = Invocation(status="failed")
    deadline = time.monotonic() + policy.total_timeout_s
    for attempt in range(1, policy.retry.max_attempts + 1):
        if (attempt > 1 or cancel_check_first) and is_cancelled():
            result.status = "cancelled"
            return result
        # A probe keeps its HALF_OPEN reservation for as long as this attempt may run.
        attempt_budget = min(policy.timeout_s, max(0.0, deadline - time.monotonic()))
        if attempt == 1 and first_permit is not None:
            permit = first_permit
        else:
            permit = store.circuit_acquire(
                agent_key=agent_key, settings=policy.circuit, probe_ttl_s=attempt_budget + 5.0
            )
        if permit.transition:
            result.circuit_transitions.append(permit.transition)
        if not permit.allowed:
            result.error_code = "CIRCUIT_OPEN"
            result.error_message = f"The agent's circuit is {permit.state}; not called."
            result.retry_after_s = permit.retry_after_s
            return result
        ctx = make_context(attempt)
        result.contexts.append(ctx)
        result.attempts = attempt
        budget = attempt_budget
        started = time.monotonic()
        # copy_context: pool threads start empty; the run's log fields must reach the handler.
        future = _handler_pool().submit(
            contextvars.copy_context().run,
            _call_in_thread,
            handler,
            dataclasses.replace(request, attempt=attempt),
            ctx,
        )
        retryable = False
        counts = True  # whether this outcome feeds the circuit
        try:
            output = future.result(timeout=budget)
        except FutureTimeout:
            ctx.cancel()
            result.timed_out += 1
            result.error_code = "AGENT_TIMEOUT"
            result.error_message = f"The handler ran past its timeout of {budget:.3g} s."
            success, retryable = False, True
        except RetryableError as exc:
            result.error_code = "AGENT_EXECUTION_FAILED"
            result.error_message = str(exc) or type(exc).__name__
            result.error_details = exc.details
            success, retryable = False, True
        except HandlerError as exc:
            result.error_code = "AGENT_EXECUTION_FAILED"
            result.error_message = str(exc) or type(exc).__name__
            result.error_details = exc.details
            success = False
            counts = exc.counts_for_circuit
        except Exception as exc:
            logger.warning("handler %s raised %s", agent_key, exc, exc_info=True)
            result.error_code = "AGENT_EXECUTION_FAILED"
            result.error_message = f"{type(exc).__name__}: {exc}"
            success = False
        else:
            success = True
        elapsed = time.monotonic() - started
        slow = policy.circuit.slow_call_s is not None and elapsed >= policy.circuit.slow_call_s
        if slow:
            result.slow_calls += 1
        transition = store.circuit_record(
            agent_key=agent_key,
            settings=policy.circuit,
            permit=permit,
            # An ignored failure (the request's fault) is the agent answering properly.
            success=(success or not counts) and not slow,
        )
        if transition:
            result.circuit_transitions.append(transition)
        if success:
            if cancel_check_after_success and is_cancelled():
                result.status = "cancelled"
                return result
            result.status = "success"
            result.output = output
            result.error_code = result.error_message = ""
            return result
        if is_cancelled() or (ctx.cancelled and result.error_code != "AGENT_TIMEOUT"):
            result.status = "cancelled"
            return result
        if not retryable or attempt == policy.retry.max_attempts:
            return result
        delay = policy.retry.delay_s(attempt)
        if time.monotonic() + delay >= deadline:
            return result
        result.retries += 1
        result.waited_ms += delay * 1000
        time.sleep(delay)
    return result
