"""Both policy stores against one simple model, step for step (hypothesis, stateful).

The process-local store runs on an injected fake clock and the Redis store on the
scripts' test-only explicit time, so one sequence of operations means the same instants
for the model and both stores. Times are whole seconds (circuits) or whole microseconds
(the rate limit) from a fixed epoch, exactly representable both as floats and as the
scripts' microseconds; the waits are tens of seconds, so no Redis key expires (in real
time) while an example runs. The rate limit's model also checks GCRA's guarantee itself:
never more than limit + floor(span / interval) admissions in any span.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field

import pytest
import redis
from hypothesis import HealthCheck, currently_in_test_context, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from orchestration.policies import CircuitState, LocalPolicyStore, RedisPolicyStore
from orchestration.policies.settings import CircuitSettings, RateLimit

REDIS_URL = os.environ.get("REDIS_URL", "")
needs_redis = pytest.mark.skipif(not REDIS_URL, reason="needs a real Redis (REDIS_URL)")

EPOCH = 1_700_000_000.0
AGENT = "agent-1"
RATE_KEYS = [("organization", "rl:org-1:agent-1"), ("principal", "rl:key-1:agent-1")]
RATE_LIMIT = RateLimit(limit=3, window_s=20)


@dataclass
class ModelCircuit:
    """The circuit as the issue describes it, with nothing but the rules."""

    cs: CircuitSettings
    state: str = CircuitState.CLOSED
    forced: str | None = None
    consecutive: int = 0
    window: list[bool] = field(default_factory=list)  # True = failure, newest last
    opened_at: float | None = None
    probes: dict[int, float] = field(default_factory=dict)  # reservation -> expiry
    next_probe: int = 0

    def live(self, now: float) -> dict[int, float]:
        return {k: t for k, t in self.probes.items() if t > now}

    def trip(self, now: float) -> str:
        self.state, self.opened_at = CircuitState.OPEN, now
        self.consecutive, self.window, self.probes = 0, [], {}
        return CircuitState.OPEN

    def close(self) -> str:
        self.state, self.opened_at = CircuitState.CLOSED, None
        self.consecutive, self.window, self.probes = 0, [], {}
        return CircuitState.CLOSED

    def steady(self) -> bool:
        """A full window without a failure (counted only when the failure rate counts):
        a call admitted now is ordered here, so its success changes nothing."""
        return (
            self.cs.failure_rate_threshold > 0
            and len(self.window) == self.cs.window_size
            and not any(self.window)
        )

    def acquire(self, now: float, ttl: float | None) -> tuple:
        """(allowed, state, retry_after, probe id or None, transition, steady)"""
        if self.forced:
            allowed = self.forced == CircuitState.CLOSED
            return (allowed, f"FORCED_{self.forced}", 0 if allowed else self.cs.wait_in_open_s)
        if self.state == CircuitState.CLOSED:
            return (True, CircuitState.CLOSED, 0, None, None, self.steady())
        transition = None
        if self.state == CircuitState.OPEN:
            if now < self.opened_at + self.cs.wait_in_open_s:
                return (False, CircuitState.OPEN, self.opened_at + self.cs.wait_in_open_s - now)
            self.state, self.probes, transition = CircuitState.HALF_OPEN, {}, "HALF_OPEN"
        self.probes = self.live(now)
        if len(self.probes) >= self.cs.permitted_probes:
            return (False, CircuitState.HALF_OPEN, self.cs.wait_in_open_s, None, transition)
        self.next_probe += 1
        self.probes[self.next_probe] = now + (self.cs.wait_in_open_s if ttl is None else ttl)
        return (True, CircuitState.HALF_OPEN, 0, self.next_probe, transition)

    def record(
        self, now: float, probe: int | None, success: bool, steady: bool = False
    ) -> str | None:
        if self.forced:
            return None
        if steady and success:
            # Admitted steady: the success belongs where it was admitted, in a window of
            # successes it leaves as it was -- whatever was recorded since.
            return None
        if probe is not None:
            expiry = self.probes.pop(probe, None)
            if expiry is None or expiry <= now or self.state != CircuitState.HALF_OPEN:
                return None
            return self.close() if success else self.trip(now)
        if self.state != CircuitState.CLOSED:
            return None
        self.window = ([*self.window, not success])[-self.cs.window_size :]
        self.consecutive = 0 if success else self.consecutive + 1
        if self.consecutive >= self.cs.failure_threshold:
            return self.trip(now)
        calls, failures = len(self.window), sum(self.window)
        if calls >= self.cs.minimum_calls and 100.0 * failures / calls >= (
            self.cs.failure_rate_threshold
        ):
            return self.trip(now)
        return None

    def force(self, state: str | None) -> None:
        self.forced = state
        if state is None:
            self.close()


@dataclass
class ModelRateLimit:
    """GCRA as the docs state it, in whole microseconds.

    Each key has a theoretical arrival time (TAT). A request moves it one interval
    T = ceil(window / limit) later, from now if it lies in the past, and is admitted while
    the moved TAT is at most limit * T ahead of now; every key must admit, or none moves.
    """

    tats: dict[str, int] = field(default_factory=dict)
    admitted: dict[str, list[int]] = field(default_factory=dict)  # key -> admission times

    def decide(self, now: int, keys: list[tuple[str, str]], limit: RateLimit) -> tuple:
        """(allowed, remaining, retry_after, scope)"""
        interval = -(-round(limit.window_s * 1_000_000) // limit.limit)
        burst = limit.limit * interval
        moved = [max(self.tats.get(key, now), now) + interval for _, key in keys]
        waits = [tat - burst - now for tat in moved]
        worst = max(range(len(keys)), key=lambda i: (waits[i], -i))  # the first on a tie
        if waits[worst] > 0:
            return (False, 0, waits[worst] / 1_000_000, keys[worst][0])
        for (_, key), tat in zip(keys, moved, strict=True):
            self.tats[key] = tat
            self.admitted.setdefault(key, []).append(now)
        return (True, min((burst - (tat - now)) // interval for tat in moved), 0.0, "")


def _note(text: str) -> None:
    """Coverage statistics (--hypothesis-show-statistics); the scripted runs have none."""
    if currently_in_test_context():
        event(text)


def _permit_tuple(permit) -> tuple:
    return (permit.allowed, permit.state, permit.retry_after_s, permit.probe, permit.transition)


class _BothStores(RuleBasedStateMachine):
    """The two stores on one fake clock; each example gets fresh Redis keys."""

    def __init__(self) -> None:
        super().__init__()
        self.now = EPOCH
        self.local = LocalPolicyStore(clock=lambda: self.now)
        self.redis = RedisPolicyStore(REDIS_URL, key_prefix=f"acp:test:{uuid.uuid4().hex[:12]}:")

    def teardown(self) -> None:
        keys = list(self.redis.client.scan_iter(match=f"{self.redis.prefix}*", count=1000))
        if keys:
            self.redis.client.delete(*keys)
        self.redis.close()


class CircuitMatchesTheModel(_BothStores):
    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple] = []  # (model probe id, local permit, redis permit)

    @initialize(
        failure_threshold=st.integers(2, 4),
        wait_in_open_s=st.sampled_from([10.0, 20.0, 30.0]),
        permitted_probes=st.integers(1, 3),
        window_size=st.integers(2, 6),
        minimum_calls=st.integers(2, 6),
        failure_rate_threshold=st.sampled_from([40.0, 50.0, 75.0]),
    )
    def configure(self, **values) -> None:
        self.cs = CircuitSettings(slow_call_s=None, **values)
        self.model = ModelCircuit(self.cs)

    @rule(ttl=st.sampled_from([None, 5.0, 45.0]))
    def acquire(self, ttl) -> None:
        expected = self.model.acquire(self.now, ttl)
        local = self.local.circuit_acquire(agent_key=AGENT, settings=self.cs, probe_ttl_s=ttl)
        remote = self.redis.circuit_acquire(
            agent_key=AGENT, settings=self.cs, probe_ttl_s=ttl, now=self.now
        )
        allowed, state, retry_after = expected[:3]
        _note(f"acquire {state} {'allowed' if allowed else 'refused'}")
        probe_id, transition = (expected[3], expected[4]) if len(expected) > 3 else (None, None)
        steady = expected[5] if len(expected) > 5 else False
        want = (allowed, state, retry_after, probe_id is not None, transition)
        assert _permit_tuple(local) == want
        assert _permit_tuple(remote) == want
        assert local.steady == remote.steady == steady
        if allowed:
            self.held.append((probe_id, local, remote))

    @precondition(lambda self: self.held)
    @rule(data=st.data(), success=st.booleans())
    def record(self, data, success) -> None:
        """Any permit held, in any order: late outcomes of calls from an earlier state too."""
        self._record(data.draw(st.integers(0, len(self.held) - 1), label="permit"), success)

    @precondition(lambda self: any(probe is not None for probe, _, _ in self.held))
    @rule(success=st.booleans())
    def record_probe(self, success) -> None:
        """The decisive step of HALF_OPEN, made as likely as any other step."""
        self._record(max(i for i, held in enumerate(self.held) if held[0] is not None), success)

    @rule(outcomes=st.lists(st.booleans(), min_size=1, max_size=6))
    def calls(self, outcomes) -> None:
        """A burst of calls, each acquired and recorded at once, so circuits open often."""
        for success in outcomes:
            self.acquire(ttl=None)
            if self.held and self.held[-1][0] is None:
                self._record(len(self.held) - 1, success)

    def _record(self, index: int, success: bool) -> None:
        probe_id, local, remote = self.held.pop(index)
        expected = self.model.record(self.now, probe_id, success, steady=remote.steady)
        _note(f"record {'probe' if probe_id else 'call'} -> {expected}")
        assert (
            self.local.circuit_record(
                agent_key=AGENT, settings=self.cs, permit=local, success=success
            )
            == expected
        )
        assert (
            self.redis.circuit_record(
                agent_key=AGENT, settings=self.cs, permit=remote, success=success, now=self.now
            )
            == expected
        )

    @rule(seconds=st.integers(0, 40))
    def advance(self, seconds) -> None:
        self.now += seconds

    @rule(offset=st.sampled_from([-1, 0, 1]))
    def advance_to_the_end_of_the_wait(self, offset) -> None:
        """Land on the boundaries, where off-by-one mistakes live."""
        self.now += self.cs.wait_in_open_s + offset

    @rule(state=st.sampled_from([CircuitState.OPEN, CircuitState.CLOSED, None]))
    def force(self, state) -> None:
        self.model.force(state)
        self.local.circuit_force(agent_key=AGENT, state=state)
        self.redis.circuit_force(agent_key=AGENT, state=state)

    @invariant()
    def snapshots_agree(self) -> None:
        if not hasattr(self, "model"):
            return
        m = self.model
        state = f"FORCED_{m.forced}" if m.forced else m.state
        next_probe_at = None
        if not m.forced and m.state == CircuitState.OPEN:
            next_probe_at = m.opened_at + self.cs.wait_in_open_s
        want = (
            state,
            m.consecutive,
            len(m.window),
            sum(m.window),
            m.opened_at,
            next_probe_at,
            len(m.live(self.now)),
        )
        for snapshot in (
            self.local.circuit_snapshot(agent_key=AGENT),
            self.redis.circuit_snapshot(agent_key=AGENT, now=self.now),
        ):
            assert (
                snapshot.state,
                snapshot.consecutive_failures,
                snapshot.window_calls,
                snapshot.window_failures,
                snapshot.opened_at,
                snapshot.next_probe_at,
                snapshot.probes_in_flight,
            ) == want


class RateLimitMatchesTheModel(_BothStores):
    """The clock moves in whole microseconds (``now_us``); both stores see the same instant
    as epoch seconds (``now``), which converts back to the same microsecond exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.model = ModelRateLimit()
        self.now_us = round(EPOCH * 1_000_000)
        self.last_wait: float | None = None

    def _tick(self, microseconds: int) -> None:
        self.now_us += microseconds
        self.now = self.now_us / 1_000_000

    @rule(keys=st.sampled_from([RATE_KEYS, RATE_KEYS[:1], RATE_KEYS[1:], RATE_KEYS[::-1]]))
    def rate_limit(self, keys) -> None:
        expected = self.model.decide(self.now_us, keys, RATE_LIMIT)
        _note(f"rate {'allowed' if expected[0] else 'refused'}")
        for decision in (
            self.local.rate_limit(keys=keys, limit=RATE_LIMIT),
            self.redis.rate_limit(keys=keys, limit=RATE_LIMIT, now=self.now),
        ):
            assert (
                decision.allowed,
                decision.remaining,
                decision.retry_after_s,
                decision.scope,
            ) == expected
        if not expected[0]:
            self.last_wait = expected[2]

    @rule(seconds=st.sampled_from([0, 1, 5, 6, 7, 10, 19, 20, 21]))
    def advance(self, seconds) -> None:
        self._tick(seconds * 1_000_000)

    @precondition(lambda self: self.last_wait is not None)
    @rule(offset_us=st.sampled_from([-1, 0, 1]))
    def advance_to_the_retry_after(self, offset_us) -> None:
        """Land on the instant the last refusal named, where off-by-one mistakes live."""
        self._tick(round(self.last_wait * 1_000_000) + offset_us)
        self.last_wait = None

    @invariant()
    def never_more_than_the_guarantee(self) -> None:
        """In any span [a, b] a key admits at most limit + floor((b - a) / T) requests."""
        interval = -(-round(RATE_LIMIT.window_s * 1_000_000) // RATE_LIMIT.limit)
        for times in self.model.admitted.values():
            for first in range(len(times)):
                for last in range(first, len(times)):
                    allowance = RATE_LIMIT.limit + (times[last] - times[first]) // interval
                    assert last - first + 1 <= allowance


_BOUNDED = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCircuitMatchesTheModel = needs_redis(CircuitMatchesTheModel.TestCase)
TestCircuitMatchesTheModel.settings = _BOUNDED
TestRateLimitMatchesTheModel = needs_redis(RateLimitMatchesTheModel.TestCase)
TestRateLimitMatchesTheModel.settings = _BOUNDED


# --- the boundaries, every time ----------------------------------------------------------------
# Random exploration finds them only now and then; these scripted runs drive the same
# machines (rules are plain methods) through each one on every test run.
CONFIG = {
    "failure_threshold": 2,
    "wait_in_open_s": 10.0,
    "permitted_probes": 1,
    "window_size": 4,
    "minimum_calls": 4,
    "failure_rate_threshold": 50.0,
}
OPENED = [("calls", {"outcomes": [False, False]})]
HALF_OPEN = [*OPENED, ("advance_to_the_end_of_the_wait", {"offset": 0}), ("acquire", {"ttl": 5.0})]
SCENARIOS = {
    "a probe failure re-opens": [*HALF_OPEN, ("record_probe", {"success": False})],
    "a probe success closes": [*HALF_OPEN, ("record_probe", {"success": True})],
    "one second before the wait ends": [
        *OPENED,
        ("advance_to_the_end_of_the_wait", {"offset": -1}),
        ("acquire", {"ttl": None}),
    ],
    "probes are bounded": [*HALF_OPEN, ("acquire", {"ttl": None})],
    "a reservation expires at its instant": [
        *HALF_OPEN,
        ("advance", {"seconds": 5}),
        ("acquire", {"ttl": None}),
        ("record", {"index": 0, "success": True}),
        ("record_probe", {"success": False}),
    ],
    "a failure rate at the threshold opens": [
        ("configure", {**CONFIG, "failure_threshold": 4}),
        ("calls", {"outcomes": [True, False, True, False]}),
    ],
    "an outcome from before the opening is ignored": [
        ("acquire", {"ttl": None}),
        *OPENED,
        ("record", {"index": 0, "success": False}),
    ],
    "the window slides": [
        ("configure", {**CONFIG, "failure_threshold": 9, "failure_rate_threshold": 75.0}),
        ("calls", {"outcomes": [False, True, True, False, False, True, False]}),
    ],
    "a full window of successes stays full, then fails by rate": [
        ("configure", {**CONFIG, "failure_threshold": 9}),
        ("calls", {"outcomes": [True] * 6}),
        ("calls", {"outcomes": [False, False]}),
    ],
    "forcing overrides and releasing starts afresh": [
        *OPENED,
        ("force", {"state": CircuitState.CLOSED}),
        ("calls", {"outcomes": [False, False, False]}),
        ("force", {"state": CircuitState.OPEN}),
        ("acquire", {"ttl": None}),
        ("force", {"state": None}),
        ("acquire", {"ttl": None}),
    ],
}


@needs_redis
@pytest.mark.parametrize("steps", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_circuit_boundaries(steps):
    machine = CircuitMatchesTheModel()
    try:
        if steps[0][0] != "configure":
            machine.configure(**CONFIG)
        for name, arguments in steps:
            if name == "record":
                machine._record(arguments["index"], arguments["success"])
            else:
                getattr(machine, name)(**arguments)
            machine.snapshots_agree()
    finally:
        machine.teardown()


@needs_redis
def test_rate_limit_boundaries():
    machine = RateLimitMatchesTheModel()
    try:
        for seconds in (0, 1, 1, 0, 18, 1, 0, 1, 19, 20, 0, 6, 7):
            machine.advance(seconds)
            machine.rate_limit(RATE_KEYS)
            machine.rate_limit(RATE_KEYS[1:])
            machine.never_more_than_the_guarantee()
    finally:
        machine.teardown()


@needs_redis
@pytest.mark.parametrize("offset_us", [-1, 0, 1])
def test_a_burst_of_the_limit_then_one_per_interval(offset_us):
    """From idle exactly ``limit`` at once; then one per interval, each admitted on the very
    microsecond its refusal's Retry-After named (and refused one microsecond before)."""
    machine = RateLimitMatchesTheModel()  # every step asserts both stores against the model
    try:
        for _ in range(RATE_LIMIT.limit + 1):
            machine.rate_limit(RATE_KEYS)
        admitted = machine.model.admitted[RATE_KEYS[0][1]]
        assert len(admitted) == RATE_LIMIT.limit
        assert machine.last_wait == 6.666667  # 20 s / 3, rounded up to the microsecond
        for n in range(1, 4):
            machine.advance_to_the_retry_after(offset_us)
            machine.rate_limit(RATE_KEYS)
            if offset_us < 0:
                assert machine.last_wait == 0.000001
                machine.advance_to_the_retry_after(0)
                machine.rate_limit(RATE_KEYS)
            assert len(admitted) == RATE_LIMIT.limit + n
            machine.rate_limit(RATE_KEYS)  # at once: refused for about one more interval
            assert machine.last_wait is not None
            machine.never_more_than_the_guarantee()
    finally:
        machine.teardown()


# --- event sampling (not part of the machine: Redis samples on real time) ------------------
def test_local_store_samples_one_event_per_key_per_ten_seconds():
    now = [EPOCH]
    store = LocalPolicyStore(clock=lambda: now[0])
    limit = RateLimit(limit=1, window_s=60)
    store.rate_limit(keys=RATE_KEYS[:1], limit=limit)

    samples = []
    for step in (0, 1, 8.9, 0.1, 5):
        now[0] += step
        samples.append(store.rate_limit(keys=RATE_KEYS[:1], limit=limit).sample_event)

    assert samples == [True, False, False, True, False]
    assert store.rate_rejections(agent_key=AGENT) == {"organization": 5}


@needs_redis
def test_redis_store_samples_one_event_per_key_per_ten_seconds():
    store = RedisPolicyStore(REDIS_URL, key_prefix=f"acp:test:{uuid.uuid4().hex[:12]}:")
    try:
        limit = RateLimit(limit=1, window_s=60)
        store.rate_limit(keys=RATE_KEYS, limit=limit)
        samples = [store.rate_limit(keys=RATE_KEYS, limit=limit).sample_event for _ in range(5)]
        assert samples == [True, False, False, False, False]
        ttl_ms = store.client.pttl(f"{store.prefix}rs:{RATE_KEYS[0][1]}|organization")
        assert 9_000 < ttl_ms <= 10_000
        assert store.rate_rejections(agent_key=AGENT) == {"organization": 5}
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{store.prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
        store.close()
