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
    # Only when the shared store cannot be reached: the fail-open permit does not know the
    # state, the fail-closed one refuses because it cannot know it.
    UNKNOWN = "UNKNOWN"
    UNAVAILABLE = "UNAVAILABLE"


class PolicyStoreUnavailable(RuntimeError):
    """An operator's command (forcing a circuit) could not reach the shared store.

    Decisions never raise it: they answer with the configured fail mode instead.
    """


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_s: float = 0.0
    scope: str = ""  # which key refused: "organization" or "principal"
    # True for at most one refusal per key per 10 s: the caller publishes "rate.limited"
    # only then, so an attack cannot flood the event table (the counter counts them all).
    sample_event: bool = False
    # The agent's circuit, read in the same round trip when rate_limit() was given its
    # ``circuit_key`` and the circuit admits without a probe (CLOSED, FORCED_CLOSED); None:
    # not read, or in another state -- the caller asks circuit_acquire().
    circuit: CircuitPermit | None = None
    # The agent definitions' version, read in the same round trip when rate_limit() was asked
    # for it (``definitions_version=True``); None when not asked or not known.
    definitions_version: int | None = None


@dataclass(frozen=True)
class CircuitPermit:
    allowed: bool
    state: str
    retry_after_s: float = 0.0
    probe: bool = False  # a HALF_OPEN probe reservation that record() must release
    transition: str | None = None  # e.g. OPEN -> HALF_OPEN happened on this call
    probe_id: str = ""  # which reservation record() releases (probes only)
    # Read with a rate-limit decision (RateDecision.circuit): the circuit was CLOSED with a
    # full window of successes, so this call's success changes nothing and is not sent.
    steady: bool = False


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
    healthy: bool  # False while the shared store cannot be reached (decisions use the fail mode)
    last_error: str | None

    def definitions_version(self) -> int | None:
        """The agent definitions' version: a count every change of a definition moves
        (definitions_bump). Whoever caches definitions trusts its copy while this is the
        version it was read at. None while the store cannot be reached (read afresh)."""

    def definitions_bump(self) -> None:
        """Move the definitions' version (an agent, its intents or config rows changed)."""

    def rate_limit(
        self,
        *,
        keys: list[tuple[str, str]],
        limit: RateLimit,
        circuit_key: str | None = None,
        circuit: CircuitSettings | None = None,
        definitions_version: bool = False,
    ) -> RateDecision:
        """Admit one request against every key, or none (GCRA, see lua/rate_limit.lua).

        ``definitions_version``: also read the definitions' version in the same round trip
        (RateDecision.definitions_version), for a caller that used cached definitions.

        ``circuit_key``: also read that agent's circuit when admitting (``circuit``), for a
        call about to be made: a store may leave it None, and the caller then acquires.
        ``circuit``: that circuit's settings (lets the store tell its steady state).

        ``keys`` are (scope, key) pairs of one agent: each key ends with ":<agent key>".
        An idle key admits a burst of ``limit.limit``, then one request per interval
        (``window_s / limit``); a refusal's ``retry_after_s`` is the exact wait until the
        same request would be admitted. ``remaining`` is how many more would be admitted
        at this instant.
        """
        ...

    def rate_rejections(self, *, agent_key: str) -> dict[str, int]:
        """How many requests to this agent were refused, per scope."""
        ...

    def circuit_acquire(
        self, *, agent_key: str, settings: CircuitSettings, probe_ttl_s: float | None = None
    ) -> CircuitPermit:
        """May this call go ahead? A HALF_OPEN probe holds a reservation for ``probe_ttl_s``
        (default: wait_in_open_s); record() releases it, expiry frees it if record never comes.
        """
        ...

    def circuit_record(
        self, *, agent_key: str, settings: CircuitSettings, permit: CircuitPermit, success: bool
    ) -> str | None:
        """Feed one call's outcome; returns the new state when it changed, else None."""
        ...

    def circuit_snapshot(self, *, agent_key: str) -> CircuitSnapshot: ...

    def circuit_force(self, *, agent_key: str, state: str | None) -> None:
        """Force OPEN or CLOSED; None releases the override."""
        ...
