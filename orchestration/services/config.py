"""The live orchestrator configuration: one document, the newest revision wins.

Every process reads it through config_current(), which caches the document for a
short time (at most one heartbeat interval), so a change made in one process is
applied by every other process without a restart.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

from orchestration.models import OrchestratorConfigRevision
from orchestration.policies.settings import BUILTIN_DEFAULTS, AgentPolicy, agent_policy

DEFAULT_DOCUMENT: dict[str, Any] = {
    # Policy defaults for agents whose config does not say otherwise.
    "rate_limit": dict(BUILTIN_DEFAULTS["rate_limit"]),
    "retry": dict(BUILTIN_DEFAULTS["retry"]),
    "circuit": dict(BUILTIN_DEFAULTS["circuit"]),
    "timeouts": {
        "timeout_s": BUILTIN_DEFAULTS["timeout_s"],
        "total_timeout_s": BUILTIN_DEFAULTS["total_timeout_s"],
    },
    # The fleet: heartbeats, leases and the reaper.
    "nodes": {
        "heartbeat_interval_s": 5,
        "unhealthy_after_intervals": 3,
        "failed_after_intervals": 6,
        "lease_s": 60,
        "pending_timeout_s": 120,
        "max_attempts": 3,
    },
    # Kubernetes-HPA-style evaluation.
    "scaling": {
        "target_cpu_utilization": 0.7,
        "target_memory_utilization": 0.8,
        "target_requests_per_replica": 50.0,
        "tolerance": 0.1,
        "min_replicas": 1,
        "max_replicas": 10,
        "scale_down_stabilization_s": 300,
    },
    "routing": {"strategy": "region-affinity", "reserved_high_priority_share": 0.2},
    "events": {"retention_days": 30},
}

_lock = threading.Lock()
_cached: tuple[float, dict] | None = None


def deep_merge(base: dict, override: dict) -> dict:
    result = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = deep_merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def config_load() -> dict:
    """The live document from the database: the newest revision over the defaults."""
    newest = OrchestratorConfigRevision.objects.order_by("-created_at").only("document").first()
    return deep_merge(DEFAULT_DOCUMENT, newest.document if newest else {})


def config_current(*, max_age_s: float | None = None) -> dict:
    """The live document, re-read at most every heartbeat interval (or max_age_s)."""
    global _cached
    now = time.monotonic()
    cached = _cached
    if cached is not None:
        age_limit = (
            max_age_s if max_age_s is not None else cached[1]["nodes"]["heartbeat_interval_s"]
        )
        if now - cached[0] < age_limit:
            return cached[1]
    document = config_load()
    with _lock:
        _cached = (now, document)
    return document


def config_cache_clear() -> None:
    global _cached
    with _lock:
        _cached = None


def policy_defaults(document: dict) -> dict:
    """The live document in the shape agent_policy() layers under an agent's config."""
    return {
        "rate_limit": document["rate_limit"],
        "retry": document["retry"],
        "circuit": document["circuit"],
        "timeout_s": document["timeouts"]["timeout_s"],
        "total_timeout_s": document["timeouts"]["total_timeout_s"],
    }


def agent_policy_live(agent_config: dict | None) -> AgentPolicy:
    """An agent's policies: its own config over the live configuration over built-ins."""
    return agent_policy(agent_config, policy_defaults(config_current()))
