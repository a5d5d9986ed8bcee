"""Shared resilience policies. Everything that keeps policy state lives in this package."""

from __future__ import annotations

import threading

from orchestration.policies.base import (
    CircuitPermit,
    CircuitSnapshot,
    CircuitState,
    PolicyStore,
    RateDecision,
)
from orchestration.policies.local import LocalPolicyStore
from orchestration.policies.settings import AgentPolicy, agent_policy

_store: PolicyStore | None = None
_store_lock = threading.Lock()


def policy_store() -> PolicyStore:
    """The process's policy store, created on first use."""
    global _store
    if _store is None:
        with _store_lock:
            if _store is None:
                _store = LocalPolicyStore()
    return _store


def policy_store_reset(store: PolicyStore | None = None) -> None:
    """Swap the store (tests, or after settings change)."""
    global _store
    with _store_lock:
        _store = store


__all__ = [
    "AgentPolicy",
    "CircuitPermit",
    "CircuitSnapshot",
    "CircuitState",
    "LocalPolicyStore",
    "PolicyStore",
    "RateDecision",
    "agent_policy",
    "policy_store",
    "policy_store_reset",
]
