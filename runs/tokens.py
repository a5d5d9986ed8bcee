"""Run tokens: a bearer credential for one run, usable only while that run is RUNNING.

Remote agents report their tool calls, metrics and steps with it. The token is
signed (not stored); it names the run and the attempt, so a token handed to an
attempt that was since reassigned stops working.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.core import signing

TOKEN_PREFIX = "rt_"  # noqa: S105 (a marker, not a secret)
_SALT = "acp.run-token"
MAX_AGE_SECONDS = 24 * 3600


@dataclass(frozen=True)
class RunTokenClaims:
    run_id: str
    attempt: int


def run_token_issue(*, run_id, attempt: int) -> str:
    return TOKEN_PREFIX + signing.dumps({"r": str(run_id), "a": attempt}, salt=_SALT)


def run_token_read(token: str) -> RunTokenClaims | None:
    if not token.startswith(TOKEN_PREFIX):
        return None
    try:
        data = signing.loads(token[len(TOKEN_PREFIX) :], salt=_SALT, max_age=MAX_AGE_SECONDS)
    except signing.BadSignature:
        return None
    if not isinstance(data, dict) or "r" not in data or "a" not in data:
        return None
    return RunTokenClaims(run_id=str(data["r"]), attempt=int(data["a"]))
