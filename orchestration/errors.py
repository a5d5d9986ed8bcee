"""The orchestrate contract's error codes and their HTTP statuses (API.md)."""

from __future__ import annotations

from typing import Any

ERROR_STATUS: dict[str, int] = {
    "INVALID_REQUEST": 400,
    "AGENT_REQUIRED": 400,
    "INTENT_AGENT_MISMATCH": 400,
    "UNAUTHENTICATED": 401,
    "FORBIDDEN": 403,
    "AGENT_NOT_REGISTERED": 404,
    "NOT_FOUND": 404,
    "IDEMPOTENCY_CONFLICT": 422,
    "IDEMPOTENCY_IN_PROGRESS": 409,
    "AGENT_DISABLED": 409,
    "RUN_NOT_ACTIVE": 409,
    "RUN_CANCELLED": 409,
    "RATE_LIMITED": 429,
    "CIRCUIT_OPEN": 502,
    "AGENT_EXECUTION_FAILED": 502,
    "NODE_LOST": 502,
    "AGENT_TIMEOUT": 504,
    "ORCHESTRATION_FAILED": 500,
}


class OrchestrationError(Exception):
    """A refusal or failure with a contract code; the API turns it into the envelope."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        details: Any = None,
        retry_after_s: float | None = None,
        agent: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.retry_after_s = retry_after_s
        self.agent = agent

    @property
    def http_status(self) -> int:
        return ERROR_STATUS.get(self.code, 500)
