"""Policy settings of one agent: its config over the live defaults over built-in defaults."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

# The original system's defaults: 60 requests/minute, 3 attempts with 75 ms base
# backoff, a circuit that opens after 3 failures and cools down for 10 s.
BUILTIN_DEFAULTS: dict[str, Any] = {
    "rate_limit": {"limit": 60, "window_s": 60},
    "retry": {"max_attempts": 3, "base_delay_ms": 75, "max_delay_ms": 2000},
    "circuit": {
        "failure_threshold": 3,
        "wait_in_open_s": 10,
        "permitted_probes": 1,
        "window_size": 20,
        "minimum_calls": 10,
        "failure_rate_threshold": 50,
        "slow_call_s": None,
    },
    "timeout_s": 30,
    "total_timeout_s": 120,
}


def _merged(section: str, *layers: dict) -> dict:
    result = dict(BUILTIN_DEFAULTS[section])
    for layer in layers:
        value = (layer or {}).get(section)
        if isinstance(value, dict):
            result.update({k: v for k, v in value.items() if v is not None or k == "slow_call_s"})
    return result


@dataclass(frozen=True)
class RateLimit:
    """``limit`` requests per ``window_s``, enforced with GCRA (see lua/rate_limit.lua)."""

    limit: int
    window_s: float

    @property
    def interval_us(self) -> int:
        """The emission interval in whole microseconds: one request per interval, sustained.

        Rounded up, so the sustained rate never exceeds the configured one; the burst is
        counted in intervals (``limit`` of them), so it is exactly ``limit`` whatever the
        rounding. Both stores compute in these integer microseconds, so they agree exactly.
        A limit of 0 admits nothing: one interval is then the whole window.
        """
        window_us = max(1, round(self.window_s * 1_000_000))
        if self.limit <= 0:
            return window_us
        return -(-window_us // self.limit)


@dataclass(frozen=True)
class CircuitSettings:
    failure_threshold: int
    wait_in_open_s: float
    permitted_probes: int
    window_size: int
    minimum_calls: int
    failure_rate_threshold: float
    slow_call_s: float | None


@dataclass(frozen=True)
class RetrySettings:
    max_attempts: int
    base_delay_ms: float
    max_delay_ms: float

    def delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Exponential backoff with full jitter: uniform(0, min(cap, base * 2^(attempt-1)))."""
        ceiling = min(self.max_delay_ms, self.base_delay_ms * (2 ** (attempt - 1)))
        return (rng or random).uniform(0, ceiling) / 1000.0


@dataclass(frozen=True)
class AgentPolicy:
    rate_limit: RateLimit
    circuit: CircuitSettings
    retry: RetrySettings
    timeout_s: float
    total_timeout_s: float
    extra: dict = field(default_factory=dict)


def agent_policy(agent_config: dict | None, live_defaults: dict | None = None) -> AgentPolicy:
    layers = (live_defaults or {}, agent_config or {})
    rate = _merged("rate_limit", *layers)
    circuit = _merged("circuit", *layers)
    retry = _merged("retry", *layers)
    timeout_s = BUILTIN_DEFAULTS["timeout_s"]
    total_timeout_s = BUILTIN_DEFAULTS["total_timeout_s"]
    for layer in layers:
        timeout_s = layer.get("timeout_s") or timeout_s
        total_timeout_s = layer.get("total_timeout_s") or total_timeout_s
    return AgentPolicy(
        rate_limit=RateLimit(limit=int(rate["limit"]), window_s=float(rate["window_s"])),
        circuit=CircuitSettings(
            failure_threshold=int(circuit["failure_threshold"]),
            wait_in_open_s=float(circuit["wait_in_open_s"]),
            permitted_probes=max(1, int(circuit["permitted_probes"])),
            window_size=max(1, int(circuit["window_size"])),
            minimum_calls=max(1, int(circuit["minimum_calls"])),
            failure_rate_threshold=float(circuit["failure_rate_threshold"]),
            slow_call_s=(float(circuit["slow_call_s"]) if circuit.get("slow_call_s") else None),
        ),
        retry=RetrySettings(
            max_attempts=max(1, int(retry["max_attempts"])),
            base_delay_ms=float(retry["base_delay_ms"]),
            max_delay_ms=float(retry["max_delay_ms"]),
        ),
        timeout_s=float(timeout_s),
        total_timeout_s=float(max(total_timeout_s, timeout_s)),
    )
