"""RunContext: what a handler gets to record metrics, tool calls and steps of its run.

Everything a handler records is buffered in memory and written by the run
recorder in a few batched statements when the attempt ends (runs/recorder.py),
so the handler thread never touches the database and a run costs a fixed number
of round trips whatever the handler records.
"""

from __future__ import annotations

import contextvars
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.utils import timezone

from runs.choices import StepStatus, ToolExecutionStatus

_current: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar(
    "current_run_context", default=None
)


def current_run_context() -> RunContext | None:
    """The RunContext of the run executing in this thread or task, for code deep in a handler."""
    return _current.get()


@dataclass
class MetricRecord:
    name: str
    value: float
    metadata: dict


@dataclass
class ToolCall:
    """One call of a tool; the handler sets ``output`` (or raises) inside the with-block."""

    slug: str
    call_id: str
    input: Any
    started_at: datetime
    output: Any = None
    error: str = ""
    status: str = ToolExecutionStatus.RUNNING
    metadata: dict = field(default_factory=dict)
    completed_at: datetime | None = None
    duration_ms: int | None = None


@dataclass
class StepRecord:
    name: str
    position: int
    payload: Any
    started_at: datetime
    result: Any = None
    error: str = ""
    status: str = StepStatus.RUNNING
    completed_at: datetime | None = None
    duration_ms: int | None = None


def _elapsed_ms(start: float) -> int:
    return int((time.perf_counter() - start) * 1000)


class RunContext:
    """Passed to every handler as ``ctx``; also reachable via current_run_context()."""

    def __init__(
        self,
        *,
        run_id: str,
        organization,
        agent,
        config: dict,
        attempt: int = 1,
        dataset=None,
        callback_url: str = "",
        run_token: str | Callable[[], str] = "",
        cancel_probe: Callable[[], bool] | None = None,
        cancel_probe_interval: float = 0.25,
    ) -> None:
        self.run_id = run_id
        self.organization = organization
        self.agent = agent
        self.config = config
        self.attempt = attempt
        self.dataset = dataset
        self.callback_url = callback_url
        # A callable is called once, when a handler first asks (most never do: signing a
        # token costs a visible share of an in-process run).
        self._run_token = run_token
        self.metrics: list[MetricRecord] = []
        self.tool_calls: dict[tuple[str, str], ToolCall] = {}
        self.steps: list[StepRecord] = []
        self._cancel_event = threading.Event()
        self._cancel_probe = cancel_probe
        self._cancel_probe_interval = cancel_probe_interval
        self._last_probe = 0.0
        self._lock = threading.Lock()

    @property
    def run_token(self) -> str:
        """The token with which a remote agent reports on this run (API.md, callbacks)."""
        if callable(self._run_token):
            self._run_token = self._run_token()
        return self._run_token

    # --- cancellation ---------------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        """True once the run was cancelled or timed out; handlers poll it between chunks of work."""
        if self._cancel_event.is_set():
            return True
        if self._cancel_probe is not None:
            now = time.monotonic()
            # The probe asks a shared store; rate-limit it so tight loops stay cheap.
            if now - self._last_probe >= self._cancel_probe_interval:
                self._last_probe = now
                if self._cancel_probe():
                    self._cancel_event.set()
        return self._cancel_event.is_set()

    def cancel(self) -> None:
        self._cancel_event.set()

    # --- recording ----------------------------------------------------------------------
    def metric(self, name: str, value: float, **metadata: Any) -> None:
        with self._lock:
            self.metrics.append(MetricRecord(name=name, value=float(value), metadata=metadata))

    @contextmanager
    def tool(
        self, slug: str, input: Any = None, *, call_id: str | None = None
    ) -> Iterator[ToolCall]:
        """Time one tool call. A call id makes a retried attempt update the same row."""
        call = ToolCall(
            slug=slug,
            call_id=call_id or uuid.uuid4().hex,
            input=input,
            started_at=timezone.now(),
        )
        with self._lock:
            self.tool_calls[(slug, call.call_id)] = call
        start = time.perf_counter()
        try:
            yield call
        except BaseException as exc:
            call.status = ToolExecutionStatus.FAILED
            call.error = f"{type(exc).__name__}: {exc}"
            raise
        else:
            call.status = ToolExecutionStatus.SUCCESS
        finally:
            call.completed_at = timezone.now()
            call.duration_ms = _elapsed_ms(start)

    @contextmanager
    def step(self, name: str, payload: Any = None) -> Iterator[StepRecord]:
        with self._lock:
            record = StepRecord(
                name=name, position=len(self.steps), payload=payload, started_at=timezone.now()
            )
            self.steps.append(record)
        start = time.perf_counter()
        try:
            yield record
        except BaseException as exc:
            record.status = StepStatus.FAILED
            record.error = f"{type(exc).__name__}: {exc}"
            raise
        else:
            record.status = StepStatus.SUCCESS
        finally:
            record.completed_at = timezone.now()
            record.duration_ms = _elapsed_ms(start)

    # --- context variable -------------------------------------------------------------
    @contextmanager
    def activate(self) -> Iterator[RunContext]:
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)
