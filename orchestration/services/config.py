"""The live orchestrator configuration: one document, the newest revision wins.

Every process reads it through config_current(), which caches the document for a
short time (at most one heartbeat interval), so a change made in one process is
applied by every other process without a restart.

Changes go through config_update() (the API, the admin form) and config_revert(): the
document is validated as a whole (config_schema), and every change is a new revision
row -- history is append-only -- plus a config.updated event on the bus.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

from django.db import connection, transaction

from orchestration.bus import publish
from orchestration.choices import EventType
from orchestration.models import OrchestratorConfigRevision
from orchestration.policies.settings import BUILTIN_DEFAULTS, AgentPolicy, agent_policy
from orchestration.services.config_schema import ConfigDocumentSerializer, plain

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


def config_live() -> tuple[dict, OrchestratorConfigRevision | None]:
    """The live document from the database and the revision it comes from (None: defaults)."""
    newest = (
        OrchestratorConfigRevision.objects.select_related("created_by")
        .defer("diff")
        .order_by("-created_at")
        .first()
    )
    return deep_merge(DEFAULT_DOCUMENT, newest.document if newest else {}), newest


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


# --- changes -------------------------------------------------------------------------

# pg_advisory_xact_lock key serialising configuration writers ("conf" in ASCII).
_CONFIG_LOCK_ID = 0x636F6E66


class ConfigInvalid(Exception):
    """The document fails validation; errors has DRF's nested shape."""

    def __init__(self, errors: dict) -> None:
        super().__init__("The configuration is invalid.")
        self.errors = errors


def config_validate(document: Any) -> dict:
    """The validated whole document, or ConfigInvalid naming every bad field."""
    serializer = ConfigDocumentSerializer(data=document)
    if not serializer.is_valid():
        raise ConfigInvalid(plain(serializer.errors))
    return plain(serializer.validated_data)


def config_known(document: dict) -> dict:
    """The document without keys the schema does not know (left by older revisions)."""
    return {
        section: {key: value for key, value in document.get(section, {}).items() if key in keys}
        for section, keys in DEFAULT_DOCUMENT.items()
        if isinstance(document.get(section), dict)
    }


def _leaves(document: dict, prefix: str = "") -> dict[str, Any]:
    leaves: dict[str, Any] = {}
    for key, value in document.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            leaves.update(_leaves(value, f"{path}."))
        else:
            leaves[path] = value
    return leaves


def config_diff(before: dict, after: dict) -> dict[str, dict]:
    """{"section.field": {"from": old, "to": new}} for every leaf that differs."""
    old, new = _leaves(before), _leaves(after)
    return {
        path: {"from": old.get(path), "to": new.get(path)}
        for path in sorted(old.keys() | new.keys())
        if path not in old or path not in new or old[path] != new[path]
    }


def config_errors_flat(errors: Any, prefix: str = "") -> list[tuple[str, str]]:
    """DRF's nested errors as (dotted path, message) pairs, for people to read."""
    if isinstance(errors, dict):
        return [
            pair
            for key, value in errors.items()
            for pair in config_errors_flat(value, f"{prefix}.{key}" if prefix else str(key))
        ]
    if isinstance(errors, list):
        return [pair for item in errors for pair in config_errors_flat(item, prefix)]
    return [(prefix or "document", str(errors))]


def config_update(
    *,
    document: Any,
    actor_user=None,
    actor: str = "",
    comment: str = "",
    partial: bool = False,
) -> OrchestratorConfigRevision | None:
    """Make document the live configuration; None when it is the live one already.

    partial: document is deep-merged onto the live one first (PATCH). Raises
    ConfigInvalid, having written nothing, when the result is not a valid document.
    """
    if partial and not isinstance(document, dict):
        raise ConfigInvalid({"non_field_errors": ["Expected a JSON object."]})
    comment = comment[:500]  # the column's length
    with transaction.atomic():
        if connection.vendor == "postgresql":
            # Two writers would both read the same live document: the second PATCH would
            # undo the first one's change and both diffs would be computed against it.
            # (SQLite's IMMEDIATE transactions serialise writers already.)
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CONFIG_LOCK_ID])
        live = config_load()
        candidate = deep_merge(config_known(live), document) if partial else document
        validated = config_validate(candidate)
        diff = config_diff(live, validated)
        if not diff:
            return None
        revision = OrchestratorConfigRevision.objects.create(
            created_by=actor_user,
            document=validated,
            diff=diff,
            comment=comment,
        )
        publish(
            EventType.CONFIG_UPDATED,
            {"revision": str(revision.pk), "diff": diff, "actor": actor, "comment": comment},
        )
        # Another thread of this process may re-read the old document before the commit
        # and would keep it for an interval: drop the cache again once the change is visible.
        transaction.on_commit(config_cache_clear)
    config_cache_clear()  # this thread reads its own change at once
    return revision


def config_revision_document(revision: OrchestratorConfigRevision) -> dict:
    """The whole document a revision put in force (older rows may hold only overrides)."""
    return deep_merge(DEFAULT_DOCUMENT, revision.document)


def config_revert(
    *, revision: OrchestratorConfigRevision, actor_user=None, actor: str = ""
) -> OrchestratorConfigRevision | None:
    """A new revision with an old one's document (history stays append-only).

    None when that document is the live one already; ConfigInvalid when it is no
    longer valid (it predates a rule), in which case nothing changes.
    """
    when = revision.created_at.isoformat(timespec="seconds")
    return config_update(
        document=config_revision_document(revision),
        actor_user=actor_user,
        actor=actor,
        comment=f"revert to revision {revision.pk} of {when}",
    )


def config_revisions():
    """The history, newest first, without the documents (the list shows who, when, diff)."""
    return (
        OrchestratorConfigRevision.objects.select_related("created_by")
        .defer("document")
        .order_by("-created_at", "-id")
    )
