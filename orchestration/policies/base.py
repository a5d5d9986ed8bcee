"""The narrow interface the orchestrator uses for shared policy state.

Two stores implement it: process-local (embedded mode, single process only) and
Redis (every process and machine shares one state). The orchestrator never
knows which one it talks to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from orchestration.policies.settings import CircuitSettings, RateLimit


class CircuitState:
    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"
    FORCED_OPEN = "FORCED_OPEN"
    FORCED_CLOSED = "FORCED_CLOSED"


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_s: float = 0.0
    scope: str = ""  # which key refused: "organization" or "principal"


@dataclass(frozen=True)
class CircuitPermit:
    allowed: bool
    state: str
    retry_after_s: float = 0.0
    probe: bool = False  # a HALF_OPEN probe reservation that record() must release
    transition: str | None = None  # e.g. OPEN -> HALF_OPEN happened on this call


@dataclass(frozen=True)
class CircuitSnapshot:
    agent_key: str
    state: str
    consecutive_failures: int
    window_calls: int
    window_failures: int
    opened_at: float | None
    next_probe_at: float | None
    probes_in_flight: int


class PolicyStore(Protocol):
    backend: str
    shared: bool  # True when every process sees the same state

    def rate_limit(self, *, keys: list[tuple[str, str]], limit: RateLimit) -> RateDecision: ...

    def circuit_acquire(self, *, agent_key: str, settings: CircuitSettings) -> CircuitPermit: ...

    def circuit_record(
        self, *, agent_key: str, settings: CircuitSettings, permit: CircuitPermit, success: bool
    ) -> str | None:
        """Feed one call's outcome; returns the new state when it changed, else None."""
        ...

    def circuit_snapshot(self, *, agent_key: str) -> CircuitSnapshot: ...

    def circuit_force(self, *, agent_key: str, state: str | None) -> None:
        """Force OPEN or CLOSED; None releases the override."""
        ...
