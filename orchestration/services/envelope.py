"""The orchestrate answer (API.md "POST /api/orchestrate"), built from a run row.

Built only from what the run records, so a replay with the same Idempotency-Key
returns the same envelope as the first answer.
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from orchestration.errors import ERROR_STATUS
from runs.choices import RunStatus
from runs.models import AgentRun


def _iso(value) -> str:
    return (value or timezone.now()).isoformat().replace("+00:00", "Z")


def failure_envelope(
    *,
    code: str,
    message: str,
    details: Any = None,
    agent: str | None = None,
    intent: str | None = None,
    run_id=None,
    timestamp=None,
) -> dict:
    body: dict[str, Any] = {"success": False, "status": "failed"}
    if agent:
        body["agent"] = agent
    if intent:
        body["intent"] = intent
    if run_id is not None:
        body["runId"] = str(run_id)
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    body["error"] = error
    body["timestamp"] = _iso(timestamp)
    return body


def run_envelope(run: AgentRun, *, agent_name: str, accepted: bool = False) -> tuple[int, dict]:
    """(HTTP status, body) for a run: accepted (202), completed (200) or failed."""
    if accepted:
        return 202, {
            "success": True,
            "status": "accepted",
            "agent": agent_name,
            "intent": run.intent,
            "runId": str(run.pk),
            "metrics": {},
            "timestamp": _iso(run.queued_at or run.created_at),
        }
    if run.status == RunStatus.SUCCESS:
        return 200, {
            "success": True,
            "status": "completed",
            "agent": agent_name,
            "intent": run.intent,
            "runId": str(run.pk),
            "data": run.output,
            "metrics": run.metrics or {},
            "timestamp": _iso(run.completed_at),
        }
    code = run.error_code or (
        "RUN_CANCELLED" if run.status == RunStatus.CANCELLED else "ORCHESTRATION_FAILED"
    )
    if run.status == RunStatus.CANCELLED:
        code, message = "RUN_CANCELLED", run.error_message or "The run was cancelled."
    else:
        message = run.error_message or "The run failed."
    body = failure_envelope(
        code=code,
        message=message,
        details=(run.meta or {}).get("errorDetails"),
        agent=agent_name,
        intent=run.intent,
        run_id=run.pk,
        timestamp=run.completed_at,
    )
    body["metrics"] = run.metrics or {}
    return ERROR_STATUS.get(code, 500), body
