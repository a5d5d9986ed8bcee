"""Process-local policy state: the embedded default. Correct in ONE process only.

Several API processes or workers each keep their own counters and circuits here,
which is why production configures REDIS_URL (see orchestration/policies/redis_store.py
once present) and health reports this store as single-process.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from orchestration.policies.base import CircuitPermit, CircuitSnapshot, CircuitState, RateDecision
from orchestration.policies.settings import CircuitSettings, RateLimit


@dataclass
class _Circuit:
    state: str = CircuitState.CLOSED
    consecutive_failures: int = 0
    window: deque = field(default_factory=deque)  # recent outcomes, True = failure
    opened_at: float | None = None
    probes_in_flight: int = 0
    forced: str | None = None


class LocalPolicyStore:
    backend = "local"
    shared = False

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._hits: dict[str, deque] = {}
        self._circuits: dict[str, _Circuit] = {}

    # --- rate limit: sliding window log ---------------------------------------------------
    def rate_limit(self, *, keys: list[tuple[str, str]], limit: RateLimit) -> RateDecision:
        now = self._clock()
        with self._lock:
            logs = []
            for scope, key in keys:
                log = self._hits.setdefault(key, deque())
                while log and log[0] <= now - limit.window_s:
                    log.popleft()
                if len(log) >= limit.limit:
                    retry_after = log[0] + limit.window_s - now if log else limit.window_s
                    return RateDecision(False, limit.limit, 0, max(retry_after, 0.001), scope)
                logs.append(log)
            for log in logs:
                log.append(now)
            remaining = min(limit.limit - len(log) for log in logs) if logs else limit.limit
            return RateDecision(True, limit.limit, remaining)

    # --- circuit breaker -----------------------------------------------------------------------
    def _circuit(self, agent_key: str) -> _Circuit:
        return self._circuits.setdefault(agent_key, _Circuit())

    def circuit_acquire(self, *, agent_key: str, settings: CircuitSettings) -> CircuitPermit:
        now = self._clock()
        with self._lock:
            c = self._circuit(agent_key)
            if c.forced == CircuitState.OPEN:
                return CircuitPermit(False, CircuitState.FORCED_OPEN, settings.wait_in_open_s)
            if c.forced == CircuitState.CLOSED:
                return CircuitPermit(True, CircuitState.FORCED_CLOSED)
            transition = None
            if c.state == CircuitState.OPEN:
                wait_left = c.opened_at + settings.wait_in_open_s - now
                if wait_left > 0:
                    return CircuitPermit(False, CircuitState.OPEN, wait_left)
                c.state = CircuitState.HALF_OPEN
                c.probes_in_flight = 0
                transition = CircuitState.HALF_OPEN
            if c.state == CircuitState.HALF_OPEN:
                if c.probes_in_flight >= settings.permitted_probes:
                    return CircuitPermit(
                        False,
                        CircuitState.HALF_OPEN,
                        settings.wait_in_open_s,
                        transition=transition,
                    )
                c.probes_in_flight += 1
                return CircuitPermit(
                    True, CircuitState.HALF_OPEN, probe=True, transition=transition
                )
            return CircuitPermit(True, CircuitState.CLOSED)

    def circuit_record(
        self, *, agent_key: str, settings: CircuitSettings, permit: CircuitPermit, success: bool
    ) -> str | None:
        now = self._clock()
        with self._lock:
            c = self._circuit(agent_key)
            if c.forced is not None:
                return None
            if permit.probe:
                c.probes_in_flight = max(0, c.probes_in_flight - 1)
                if c.state != CircuitState.HALF_OPEN:
                    return None
                if success:
                    self._reset(c)
                    return CircuitState.CLOSED
                return self._open(c, now)
            if c.state != CircuitState.CLOSED:
                return None  # an outcome from before the circuit opened
            c.window.append(not success)
            while len(c.window) > settings.window_size:
                c.window.popleft()
            c.consecutive_failures = 0 if success else c.consecutive_failures + 1
            if c.consecutive_failures >= settings.failure_threshold:
                return self._open(c, now)
            if len(c.window) >= settings.minimum_calls:
                rate = 100.0 * sum(c.window) / len(c.window)
                if rate >= settings.failure_rate_threshold:
                    return self._open(c, now)
            return None

    @staticmethod
    def _reset(c: _Circuit) -> None:
        c.state = CircuitState.CLOSED
        c.consecutive_failures = 0
        c.window.clear()
        c.opened_at = None
        c.probes_in_flight = 0

    @staticmethod
    def _open(c: _Circuit, now: float) -> str:
        c.state = CircuitState.OPEN
        c.opened_at = now
        c.probes_in_flight = 0
        c.consecutive_failures = 0
        c.window.clear()
        return CircuitState.OPEN

    def circuit_snapshot(self, *, agent_key: str) -> CircuitSnapshot:
        with self._lock:
            c = self._circuit(agent_key)
            return CircuitSnapshot(
                agent_key=agent_key,
                state=(c.forced and f"FORCED_{c.forced}") or c.state,
                consecutive_failures=c.consecutive_failures,
                window_calls=len(c.window),
                window_failures=sum(c.window),
                opened_at=c.opened_at,
                next_probe_at=None,
                probes_in_flight=c.probes_in_flight,
            )

    def circuit_force(self, *, agent_key: str, state: str | None) -> None:
        with self._lock:
            c = self._circuit(agent_key)
            c.forced = state
            if state is None:
                self._reset(c)
