"""Process-local policy state: the embedded default. Correct in ONE process only.

Several API processes or workers each keep their own counters and circuits here,
which is why production configures REDIS_URL (orchestration/policies/redis_store.py)
and health reports this store as single-process. Its semantics are those of the
Redis store, step for step (tests/orchestration/test_policy_model.py checks it).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from orchestration.policies.base import CircuitPermit, CircuitSnapshot, CircuitState, RateDecision
from orchestration.policies.settings import CircuitSettings, RateLimit

_CLOSED = CircuitPermit(True, CircuitState.CLOSED)
_CLOSED_STEADY = CircuitPermit(True, CircuitState.CLOSED, steady=True)

# One "rate.limited" event per key per this many seconds (the Redis store's SET PX NX).
SAMPLE_PERIOD_S = 10.0
_US = 1_000_000


def agent_of(key: str) -> str:
    """Rate-limit keys end with the agent (``rl:<org or principal>:<agent>``)."""
    return key.rsplit(":", 1)[-1]


@dataclass
class _Circuit:
    state: str = CircuitState.CLOSED
    consecutive_failures: int = 0
    window: deque = field(default_factory=deque)  # recent outcomes, True = failure
    opened_at: float | None = None
    wait_s: float | None = None  # the wait_in_open in force when it opened, for snapshots
    probes: dict[str, float] = field(default_factory=dict)  # reservation id -> expiry
    forced: str | None = None

    def live_probes(self, now: float) -> int:
        return sum(1 for expiry in self.probes.values() if expiry > now)


class LocalPolicyStore:
    backend = "local"
    shared = False
    healthy = True  # nothing to reach
    last_error: str | None = None

    def __init__(self, clock=time.time) -> None:
        # Wall-clock seconds, like the Redis store's TIME: snapshots report epoch times
        # (opened_at, next_probe_at) that the API shows as dates.
        self._clock = clock
        self._lock = threading.Lock()
        self._tats: dict[str, int] = {}  # key -> theoretical arrival time (us)
        self._samples: dict[str, float] = {}  # key -> end of its sampling period
        self._rejections: dict[str, dict[str, int]] = {}
        self._circuits: dict[str, _Circuit] = {}
        self._probe_ids = itertools.count(1)
        self._definitions_version = 0

    # --- agent definitions' version: this process's count of changes -----------------------
    def definitions_version(self) -> int | None:
        return self._definitions_version

    def definitions_bump(self) -> None:
        with self._lock:
            self._definitions_version += 1

    # --- rate limit: GCRA, in the Redis script's integer microseconds ----------------------
    def rate_limit(
        self,
        *,
        keys: list[tuple[str, str]],
        limit: RateLimit,
        circuit_key: str | None = None,
        circuit: CircuitSettings | None = None,
        definitions_version: bool = False,
    ) -> RateDecision:
        # ``circuit_key`` is ignored: asking circuit_acquire() here costs no round trip.
        # ``definitions_version`` too: a process-local store keeps no version (None).
        clock = self._clock()
        now = round(clock * _US)
        interval = limit.interval_us
        burst = interval * limit.limit
        with self._lock:
            tats = []
            worst_wait, worst = 0, None
            for scope, key in keys:
                # A TAT in the past means a full allowance, like the expired Redis key.
                tat = max(self._tats.get(key, now), now) + interval
                tats.append((key, tat))
                # Every key must have room, so the answer is the longest wait among them.
                wait = tat - burst - now
                if wait > worst_wait:
                    worst_wait, worst = wait, (scope, key)
            if worst is not None:
                scope, key = worst
                # One agent per decision, counted like the Redis store: under the first key's.
                counts = self._rejections.setdefault(agent_of(keys[0][1]), {})
                counts[scope] = counts.get(scope, 0) + 1
                sampled = self._samples.get(key, 0.0) <= clock
                if sampled:
                    self._samples[key] = clock + SAMPLE_PERIOD_S
                    if len(self._samples) > 10_000:
                        self._samples = {k: t for k, t in self._samples.items() if t > clock}
                return RateDecision(
                    False, limit.limit, 0, worst_wait / _US, scope, sample_event=sampled
                )
            remaining = limit.limit
            for key, tat in tats:
                self._tats[key] = tat
                remaining = min(remaining, (burst - (tat - now)) // interval)
            if len(self._tats) > 10_000:
                # Keys whose TAT has passed hold nothing a missing key would not.
                self._tats = {k: t for k, t in self._tats.items() if t > now}
            return RateDecision(True, limit.limit, remaining)

    def rate_rejections(self, *, agent_key: str) -> dict[str, int]:
        with self._lock:
            return dict(self._rejections.get(agent_key, {}))

    # --- circuit breaker -----------------------------------------------------------------------
    def _circuit(self, agent_key: str) -> _Circuit:
        return self._circuits.setdefault(agent_key, _Circuit())

    def circuit_acquire(
        self, *, agent_key: str, settings: CircuitSettings, probe_ttl_s: float | None = None
    ) -> CircuitPermit:
        now = self._clock()
        with self._lock:
            c = self._circuit(agent_key)
            if c.forced == CircuitState.OPEN:
                return CircuitPermit(False, CircuitState.FORCED_OPEN, settings.wait_in_open_s)
            if c.forced == CircuitState.CLOSED:
                return CircuitPermit(True, CircuitState.FORCED_CLOSED)
            transition = None
            if c.state == CircuitState.OPEN:
                wait_left = (c.opened_at or 0.0) + settings.wait_in_open_s - now
                if wait_left > 0:
                    return CircuitPermit(False, CircuitState.OPEN, wait_left)
                c.state = CircuitState.HALF_OPEN
                c.probes.clear()
                transition = CircuitState.HALF_OPEN
            if c.state == CircuitState.HALF_OPEN:
                # Reservations expire so that a probe that never reports cannot keep the
                # circuit half open forever.
                c.probes = {pid: t for pid, t in c.probes.items() if t > now}
                if len(c.probes) >= settings.permitted_probes:
                    return CircuitPermit(
                        False,
                        CircuitState.HALF_OPEN,
                        settings.wait_in_open_s,
                        transition=transition,
                    )
                probe_id = str(next(self._probe_ids))
                ttl = settings.wait_in_open_s if probe_ttl_s is None else probe_ttl_s
                c.probes[probe_id] = now + ttl
                return CircuitPermit(
                    True,
                    CircuitState.HALF_OPEN,
                    probe=True,
                    transition=transition,
                    probe_id=probe_id,
                )
            if (
                settings.failure_rate_threshold > 0
                and len(c.window) == settings.window_size
                and not any(c.window)
            ):
                # Steady: this call's success would change nothing (see redis_store).
                return _CLOSED_STEADY
            return _CLOSED

    def circuit_record(
        self, *, agent_key: str, settings: CircuitSettings, permit: CircuitPermit, success: bool
    ) -> str | None:
        now = self._clock()
        with self._lock:
            c = self._circuit(agent_key)
            if c.forced is not None:
                return None
            if permit.probe:
                # A probe counts only while its reservation is live (see redis_store).
                expiry = c.probes.pop(permit.probe_id, None)
                if expiry is None or expiry <= now or c.state != CircuitState.HALF_OPEN:
                    return None
                if success:
                    self._reset(c)
                    return CircuitState.CLOSED
                return self._open(c, now, settings)
            if c.state != CircuitState.CLOSED:
                return None  # an outcome from before the circuit opened
            if success and permit.steady:
                return None  # ordered at its admission, where it changed nothing
            c.window.append(not success)
            while len(c.window) > settings.window_size:
                c.window.popleft()
            c.consecutive_failures = 0 if success else c.consecutive_failures + 1
            if c.consecutive_failures >= settings.failure_threshold:
                return self._open(c, now, settings)
            if len(c.window) >= settings.minimum_calls:
                rate = 100.0 * sum(c.window) / len(c.window)
                if rate >= settings.failure_rate_threshold:
                    return self._open(c, now, settings)
            return None

    @staticmethod
    def _reset(c: _Circuit) -> None:
        c.state = CircuitState.CLOSED
        c.consecutive_failures = 0
        c.window.clear()
        c.opened_at = None
        c.wait_s = None
        c.probes.clear()

    @staticmethod
    def _open(c: _Circuit, now: float, settings: CircuitSettings) -> str:
        c.state = CircuitState.OPEN
        c.opened_at = now
        c.wait_s = settings.wait_in_open_s
        c.probes.clear()
        c.consecutive_failures = 0
        c.window.clear()
        return CircuitState.OPEN

    def circuit_snapshot(self, *, agent_key: str) -> CircuitSnapshot:
        now = self._clock()
        with self._lock:
            c = self._circuit(agent_key)
            next_probe_at = None
            if c.forced is None and c.state == CircuitState.OPEN and c.opened_at is not None:
                next_probe_at = c.opened_at + (c.wait_s or 0.0)
            return CircuitSnapshot(
                agent_key=agent_key,
                state=(c.forced and f"FORCED_{c.forced}") or c.state,
                consecutive_failures=c.consecutive_failures,
                window_calls=len(c.window),
                window_failures=sum(c.window),
                opened_at=c.opened_at,
                next_probe_at=next_probe_at,
                probes_in_flight=c.live_probes(now),
            )

    def circuit_force(self, *, agent_key: str, state: str | None) -> None:
        with self._lock:
            c = self._circuit(agent_key)
            c.forced = state
            if state is None:
                self._reset(c)
