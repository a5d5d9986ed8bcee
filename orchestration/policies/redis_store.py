"""Policy state shared by every process and machine through Redis.

Each decision is exactly one round trip: a Lua script (lua/*.lua) registered once and
called with EVALSHA; redis-py loads it again when the server answers NOSCRIPT, so a
restarted or failed-over Redis is picked up without help. Scripts run atomically, which
makes the rate limit exact and the HALF_OPEN probe reservations a real cluster-wide bound.
Time comes from the server's TIME, never from the caller's clock.

Keys (all under ``key_prefix``):
  tat:<key>              rate-limit state of a caller's key (e.g. ``rl:<org>:<agent>``):
                         its GCRA theoretical arrival time, an integer in us; it expires
                         one to two bursts (limit x interval) after that time passes
  rs:<key>|<scope>       "an event was published lately" marker for that key (PX 10 s);
                         the script reads the scope from the name to count a refusal
  rej:<agent>            refused requests per scope (HASH)
  c:{<agent>}            circuit state (HASH); ``:w`` outcome window (LIST); ``:p`` probe
                         reservations (ZSET); ``:seq`` probe id counter
The circuit's keys share a hash tag so they stay in one slot should Redis be clustered; the
rate-limit keys of one decision do not (a single Redis, or Sentinel, is what this targets).
Replies on the paths every request takes are bare integers: parsing an array reply costs
a pure-Python client more than the script itself (see bench/policies.py).

A circuit found steady (CLOSED, a full window without a failure) by this process's own
acquire is not asked again for ``steady_reuse_s`` (POLICY_CIRCUIT_STEADY_REUSE_MS): the
steady answer is reused, unless a call of this process failed or forced the circuit since.
Another process's opening is therefore seen here that much later at most -- as if the
call had been admitted just before the change, which the steady permit already assumes.

When Redis cannot be reached the store never raises from a decision: ``fail_mode="open"``
admits, ``"closed"`` refuses; ``healthy`` and ``last_error`` tell the health check.
Nothing here needs Django, so benchmarks and test subprocesses can build one directly.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from orchestration.policies.base import (
    CircuitPermit,
    CircuitSnapshot,
    CircuitState,
    PolicyStoreUnavailable,
    RateDecision,
)
from orchestration.policies.local import agent_of
from orchestration.policies.settings import CircuitSettings, RateLimit

logger = logging.getLogger(__name__)

FAIL_MODES = ("open", "closed")
_LUA_DIR = Path(__file__).with_name("lua")
_US = 1_000_000
_RATE_CACHE_SIZE = 4096
_CLOSED = CircuitPermit(True, CircuitState.CLOSED)
_FORCED_CLOSED = CircuitPermit(True, CircuitState.FORCED_CLOSED)
_CLOSED_STEADY = CircuitPermit(True, CircuitState.CLOSED, steady=True)


def _steady_window(settings: CircuitSettings) -> int:
    """The window size at which a CLOSED circuit is steady (full, no failure), or 0 when
    the failure rate does not count (circuit_record.lua then records every success)."""
    return settings.window_size if settings.failure_rate_threshold > 0 else 0


def _lua(name: str, *, prelude: bool = True) -> str:
    script = (_LUA_DIR / f"{name}.lua").read_text()
    return (_LUA_DIR / "prelude.lua").read_text() + "\n" + script if prelude else script


def _us(seconds: float) -> int:
    return round(seconds * _US)


def _now_arg(now: float | None) -> str:
    """'' lets the script read Redis TIME (always, outside tests); tests pass a fake clock."""
    return "" if now is None else str(_us(now))


_ADMITTED: dict[tuple, RateDecision] = {}
# rate_limit.lua's circuit code on an admission (with the circuit's key): the permit it means.
_CIRCUIT_CODES = {0: None, 1: _CLOSED, 2: _FORCED_CLOSED, 3: _CLOSED_STEADY}


def _admitted(limit: int, remaining: int, circuit_code: int = 0) -> RateDecision:
    """Admissions are immutable and few (one per limit, remaining and circuit code): each
    is built once. (Keys without a circuit code: remaining alone, code 0.)"""
    key = (limit, remaining) if not circuit_code else (limit, remaining, circuit_code)
    decision = _ADMITTED.get(key)
    if decision is None:
        if len(_ADMITTED) >= _RATE_CACHE_SIZE:
            _ADMITTED.clear()
        decision = _ADMITTED[key] = RateDecision(
            True, limit, remaining, circuit=_CIRCUIT_CODES[circuit_code]
        )
    return decision


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisPolicyStore:
    backend = "redis"
    shared = True

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "acp:pol:",
        fail_mode: str = "open",
        socket_timeout_s: float = 0.25,
        unavailable_backoff_s: float = 0.5,
        warn_every_s: float = 5.0,
        steady_reuse_s: float = 0.0,
    ) -> None:
        if fail_mode not in FAIL_MODES:
            raise ValueError(f"POLICY_FAIL_MODE must be one of {FAIL_MODES}, not {fail_mode!r}")
        self.fail_mode = fail_mode
        self.prefix = key_prefix
        # Short timeouts: a policy check sits in front of every request, so a hung Redis
        # must cost a quarter of a second, not the default forever. One immediate retry on a
        # connection error replaces a pooled connection that died with a restarted server;
        # no retry on a read timeout, because the script may have run (a probe reserved).
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )
        self._rate = self.client.register_script(_lua("rate_limit", prelude=False))
        self._rate_cache: dict[tuple, tuple] = {}
        self._acquire = self.client.register_script(_lua("circuit_acquire"))
        self._record = self.client.register_script(_lua("circuit_record"))
        self._snapshot = self.client.register_script(_lua("circuit_snapshot"))
        self.healthy = True
        self.last_error: str | None = None
        # While Redis is known to be down, answer with the fail mode at once for a short
        # while instead of paying a connect timeout on every request.
        self._unavailable_backoff_s = unavailable_backoff_s
        self._skip_until = 0.0
        self._warn_every_s = warn_every_s
        self._warned_at = float("-inf")
        self._health_lock = threading.Lock()
        # agent key -> (the steady window it was found at, until when (monotonic) reused).
        self.steady_reuse_s = max(0.0, float(steady_reuse_s))
        self._steady_until: dict[str, tuple[int, float]] = {}

    # --- availability -------------------------------------------------------------------
    def _call(self, script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one script; None when Redis is unavailable (the caller answers the fail mode)."""
        return self._run(script, ("EVALSHA", script.sha, len(keys), *keys, *args))

    def _run(self, script, command: tuple) -> Any:
        """``command`` is the whole EVALSHA command: ("EVALSHA", sha, numkeys, keys, args)."""
        if self._skip_until and time.monotonic() < self._skip_until:
            return None
        try:
            try:
                # EVALSHA straight away: the registered Script's own call costs a few
                # microseconds more per decision; it still handles NOSCRIPT (a restarted or
                # failed-over Redis): it loads the script and runs it again.
                result = self.client.execute_command(*command)
            except redis.exceptions.NoScriptError:
                numkeys = command[2]
                result = script(keys=list(command[3 : 3 + numkeys]), args=command[3 + numkeys :])
        except redis.RedisError as exc:
            self._failed(exc)
            return None
        if not self.healthy:
            self._recovered()
        return result

    def _command(self, *command) -> Any:
        """One plain command; None when Redis is unavailable."""
        if self._skip_until and time.monotonic() < self._skip_until:
            return None
        try:
            result = self.client.execute_command(*command)
        except redis.RedisError as exc:
            self._failed(exc)
            return None
        if not self.healthy:
            self._recovered()
        return result

    def _recovered(self) -> None:
        with self._health_lock:
            self.healthy, self._skip_until = True, 0.0
        logger.info("policy store: Redis is reachable again")

    def _failed(self, exc: redis.RedisError) -> None:
        now = time.monotonic()
        with self._health_lock:
            self.healthy = False
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._skip_until = now + self._unavailable_backoff_s
            warn = now - self._warned_at >= self._warn_every_s
            if warn:
                self._warned_at = now
        if warn:
            # A connection problem is the expected failure; anything else (a script error, an
            # out-of-memory server) is still answered with the fail mode, never a 500.
            expected = isinstance(exc, redis.ConnectionError | redis.TimeoutError)
            logger.warning(
                "policy store: Redis unavailable (%s), failing %s",
                self.last_error,
                self.fail_mode,
                exc_info=not expected,
            )

    # --- agent definitions' version -----------------------------------------------------------
    # The counter starts from the server's clock (µs), not from 0: a Redis that lost its
    # data (restarted without persistence) must not hand out again a version a process
    # still holds rows under. INCR then moves it by one per change.
    def definitions_version(self) -> int | None:
        key = f"{self.prefix}defs"
        value = self._command("GET", key)
        if value is None:
            if not self.healthy:
                return None
            self._definitions_start(key, "NX")  # NX: whoever starts it first wins
            value = self._command("GET", key)
        return int(value) if value is not None else None

    def definitions_bump(self) -> None:
        key = f"{self.prefix}defs"
        if self._command("INCR", key) == 1:  # the key was gone: start it from the clock
            self._definitions_start(key)

    def _definitions_start(self, key: str, *options: str) -> None:
        now = self._command("TIME")
        if now is not None:
            self._command("SET", key, int(now[0]) * _US + int(now[1]), *options)

    # --- rate limit ---------------------------------------------------------------------------
    def _rate_command(
        self,
        keys: list[tuple[str, str]],
        limit: RateLimit,
        circuit_key: str | None = None,
        window_size: int = 0,
    ) -> tuple:
        """The whole EVALSHA command of a decision on these keys under this limit.

        A decision sits in front of every request: formatting its key names and converting
        its numbers afresh each time costs a visible share of a round trip (see
        bench/policies.py), so each command is built once. The cache is bounded by clearing
        it whole; it refills in one request per caller.
        """
        cache_key = (tuple(keys), limit.limit, limit.window_s, circuit_key, window_size)
        command = self._rate_cache.get(cache_key)
        if command is None:
            if any("|" in scope for scope, _ in keys):
                raise ValueError("a rate-limit scope cannot contain '|'")
            prefix = self.prefix
            # Every key and argument costs on both ends of the wire, so the scopes travel in
            # the sample keys' names (the script reads them only to count a refusal).
            circuit = [self._circuit_keys(circuit_key)[0]] if circuit_key is not None else []
            command = (
                "EVALSHA",
                self._rate.sha,
                2 * len(keys) + 1 + len(circuit),
                *[f"{prefix}tat:{key}" for _, key in keys],
                *[f"{prefix}rs:{key}|{scope}" for scope, key in keys],
                # One agent per decision: its keys all end with the same agent.
                f"{prefix}rej:{agent_of(keys[0][1])}",
                *circuit,
                str(limit.interval_us),
                str(limit.limit),
                *([str(window_size)] if circuit else []),
            )
            if len(self._rate_cache) >= _RATE_CACHE_SIZE:
                self._rate_cache.clear()
            self._rate_cache[cache_key] = command
        return command

    def rate_limit(
        self,
        *,
        keys: list[tuple[str, str]],
        limit: RateLimit,
        circuit_key: str | None = None,
        circuit: CircuitSettings | None = None,
        now: float | None = None,
        definitions_version: bool = False,
    ) -> RateDecision:
        """``now`` (epoch seconds) is for tests only; production always uses Redis TIME.

        ``circuit_key``: the script also reads that agent's circuit on an admission (one
        HMGET), answering ``circuit`` when it admits without a probe. A call admitted that
        way is made a moment later (after the run's INSERT): exactly as if it had been
        acquired then and the circuit changed just after, which circuit_record() treats as
        a call admitted before the change.

        ``circuit``: that circuit's settings, so the script can also tell the steady state
        (CLOSED, a full window of successes): its permit is ``steady`` and circuit_record()
        does not send the call's success, which would change nothing -- the success is
        ordered at the call's admission, where the window was all successes. A failure, a
        slow call or a timeout is recorded as always.

        ``definitions_version``: the GET of the definitions' version is pipelined with the
        decision (one round trip for both): RateDecision.definitions_version.
        """
        if not keys:
            return _admitted(limit.limit, limit.limit)
        window_size = _steady_window(circuit) if circuit is not None else 0
        command = self._rate_cache.get(
            (tuple(keys), limit.limit, limit.window_s, circuit_key, window_size)
        )
        if command is None:
            command = self._rate_command(keys, limit, circuit_key, window_size)
        if now is not None:
            command = (*command, str(_us(now)))
        if definitions_version:
            result, version = self._run_with_version(command)
            decision = self._rate_decision(result, keys, limit, circuit_key)
            return dataclasses.replace(decision, definitions_version=version)
        return self._rate_decision(self._run(self._rate, command), keys, limit, circuit_key)

    def _run_with_version(self, command: tuple) -> tuple[Any, int | None]:
        """The decision's EVALSHA and the GET of the definitions' version, pipelined."""
        if self._skip_until and time.monotonic() < self._skip_until:
            return None, None
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.execute_command(*command)
            pipe.execute_command("GET", f"{self.prefix}defs")
            result, version = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            self._failed(exc)
            return None, None
        if isinstance(version, Exception):
            version = None
        if isinstance(result, redis.exceptions.NoScriptError):
            # A restarted or failed-over Redis: _run loads the script and runs it again.
            result = self._run(self._rate, command)
        elif isinstance(result, Exception):
            self._failed(result)
            return None, None
        elif not self.healthy:
            self._recovered()
        return result, int(version) if version is not None else None

    def _rate_decision(
        self, result: Any, keys: list[tuple[str, str]], limit: RateLimit, circuit_key
    ) -> RateDecision:
        if isinstance(result, int):
            if circuit_key is not None:
                return _admitted(limit.limit, result >> 2, result & 3)
            return _ADMITTED.get((limit.limit, result)) or _admitted(limit.limit, result)
        if result is None:
            if self.fail_mode == "open":
                return _admitted(limit.limit, limit.limit)
            return RateDecision(False, limit.limit, 0, 1.0, "unavailable")
        wait_us, index, sampled = result
        return RateDecision(
            False, limit.limit, 0, wait_us / _US, keys[index - 1][0], sample_event=bool(sampled)
        )

    def rate_rejections(self, *, agent_key: str) -> dict[str, int]:
        try:
            counts = self.client.hgetall(f"{self.prefix}rej:{agent_key}")
        except redis.RedisError as exc:
            self._failed(exc)
            return {}
        return {_text(scope): int(count) for scope, count in counts.items()}

    # --- circuit breaker ------------------------------------------------------------------------
    def _circuit_keys(self, agent_key: str) -> list[str]:
        """State, window, probes: what record, snapshot and a release touch."""
        base = f"{self.prefix}c:{{{agent_key}}}"
        return [base, f"{base}:w", f"{base}:p"]

    def _steady_forget(self, agent_key: str) -> None:
        """This process saw the circuit change: its next acquire asks Redis."""
        self._steady_until.pop(agent_key, None)

    def circuit_acquire(
        self,
        *,
        agent_key: str,
        settings: CircuitSettings,
        probe_ttl_s: float | None = None,
        now: float | None = None,
    ) -> CircuitPermit:
        window = _steady_window(settings)
        # Reused only on the server's clock (``now`` is a test's fake clock: always ask).
        reuse = self.steady_reuse_s > 0 and now is None and window > 0
        if reuse:
            found = self._steady_until.get(agent_key)
            if found is not None and found[0] == window and time.monotonic() < found[1]:
                return _CLOSED_STEADY
        ttl = settings.wait_in_open_s if probe_ttl_s is None else probe_ttl_s
        base = f"{self.prefix}c:{{{agent_key}}}"
        keys = [base, f"{base}:p", f"{base}:seq"]
        args = [
            _now_arg(now),
            _us(settings.wait_in_open_s),
            settings.permitted_probes,
            _us(ttl),
            window,
        ]
        result = self._call(self._acquire, keys, args)
        if result is None:
            if self.fail_mode == "open":
                return CircuitPermit(True, CircuitState.UNKNOWN)
            return CircuitPermit(False, CircuitState.UNAVAILABLE, 1.0)
        if result == 3:
            if reuse:
                if len(self._steady_until) >= _RATE_CACHE_SIZE:
                    self._steady_until.clear()
                self._steady_until[agent_key] = (window, time.monotonic() + self.steady_reuse_s)
            return _CLOSED_STEADY
        if result == 1:
            return _CLOSED
        if result == 2:
            return _FORCED_CLOSED
        allowed, state, wait_us, probe_id, transition = result
        return CircuitPermit(
            allowed=bool(allowed),
            state=_text(state),
            retry_after_s=int(wait_us) / _US,
            probe=bool(probe_id),
            transition=_text(transition) or None,
            probe_id=_text(probe_id),
        )

    def circuit_record(
        self,
        *,
        agent_key: str,
        settings: CircuitSettings,
        permit: CircuitPermit,
        success: bool,
        now: float | None = None,
    ) -> str | None:
        if permit.state in (CircuitState.UNKNOWN, CircuitState.UNAVAILABLE):
            return None  # admitted blind while Redis was down: nothing to release or count
        if success and permit.steady:
            # Admitted with a full window of successes: this success changes nothing (the
            # script's first exit), ordered at the admission. No round trip.
            return None
        if not success:
            self._steady_forget(agent_key)
        args = [
            _now_arg(now),
            1 if success else 0,
            permit.probe_id if permit.probe else "",
            settings.failure_threshold,
            settings.window_size,
            settings.minimum_calls,
            repr(float(settings.failure_rate_threshold)),
            _us(settings.wait_in_open_s),
        ]
        result = self._call(self._record, self._circuit_keys(agent_key), args)
        if not result:  # 0: nothing changed; None: Redis unavailable
            return None
        return _text(result)

    def circuit_snapshot(self, *, agent_key: str, now: float | None = None) -> CircuitSnapshot:
        result = self._call(self._snapshot, self._circuit_keys(agent_key), [_now_arg(now)])
        if result is None:
            return CircuitSnapshot(agent_key, CircuitState.UNKNOWN, 0, 0, 0, None, None, 0)
        state, forced, cf, wf, opened_us, wait_us, calls, probes = (_text(v) for v in result)
        opened_at = int(opened_us) / _US if opened_us else None
        next_probe_at = None
        if not forced and state == CircuitState.OPEN and opened_at is not None:
            next_probe_at = opened_at + int(wait_us or 0) / _US
        return CircuitSnapshot(
            agent_key=agent_key,
            state=f"FORCED_{forced}" if forced else state,
            consecutive_failures=int(cf),
            window_calls=int(calls),
            window_failures=int(wf),
            opened_at=opened_at,
            next_probe_at=next_probe_at,
            probes_in_flight=int(probes),
        )

    def circuit_force(self, *, agent_key: str, state: str | None) -> None:
        """Force OPEN or CLOSED; None releases the override and starts CLOSED afresh.

        Raises PolicyStoreUnavailable when Redis cannot be reached: an operator must not be
        told a circuit is forced when nothing changed.
        """
        if state not in (CircuitState.OPEN, CircuitState.CLOSED, None):
            raise ValueError(f"a circuit can be forced OPEN or CLOSED, not {state!r}")
        self._steady_forget(agent_key)
        keys = self._circuit_keys(agent_key)
        try:
            if state is None:
                self.client.delete(*keys)
            else:
                self.client.hset(keys[0], "forced", state)
        except redis.RedisError as exc:
            self._failed(exc)
            raise PolicyStoreUnavailable(f"cannot reach Redis to force the circuit: {exc}") from exc

    def close(self) -> None:
        self.client.close()
