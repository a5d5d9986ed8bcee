"""Shared resilience policies. Everything that keeps policy state lives in this package."""

from __future__ import annotations

import threading

# Not imported as ``settings``: that name is this package's submodule (settings.py).
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured

from orchestration.policies.base import (
    CircuitPermit,
    CircuitSnapshot,
    CircuitState,
    PolicyStore,
    PolicyStoreUnavailable,
    RateDecision,
)
from orchestration.policies.local import LocalPolicyStore
from orchestration.policies.redis_store import FAIL_MODES, RedisPolicyStore
from orchestration.policies.settings import AgentPolicy, agent_policy

_store: PolicyStore | None = None
_store_lock = threading.Lock()


def policy_store_from_settings() -> PolicyStore:
    """Redis when configured (shared by every process), else process-local.

    POLICY_REDIS_URL, when defined, wins over REDIS_URL; defining it empty keeps the policies
    process-local even though Redis serves the cache and the broker.
    """
    url = getattr(django_settings, "POLICY_REDIS_URL", None)
    if url is None:
        url = getattr(django_settings, "REDIS_URL", None)
    if url:
        fail_mode = getattr(django_settings, "POLICY_FAIL_MODE", "open")
        if fail_mode not in FAIL_MODES:
            raise ImproperlyConfigured(f"POLICY_FAIL_MODE must be one of {FAIL_MODES}")
        return RedisPolicyStore(
            url,
            fail_mode=fail_mode,
            steady_reuse_s=getattr(django_settings, "POLICY_CIRCUIT_STEADY_REUSE_MS", 0) / 1000,
        )
    return LocalPolicyStore()


def policy_store() -> PolicyStore:
    """The process's policy store, created on first use."""
    global _store
    if _store is None:
        with _store_lock:
            if _store is None:
                _store = policy_store_from_settings()
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
    "PolicyStoreUnavailable",
    "RateDecision",
    "RedisPolicyStore",
    "agent_policy",
    "policy_store",
    "policy_store_from_settings",
    "policy_store_reset",
]
