"""What every reference agent shares: intent dispatch, payload checks, cancellation, metrics.

Payload checks raise PermanentHandlerError because a malformed payload fails the
same way on every attempt; retrying it would only burn the retry budget.
"""

from __future__ import annotations

import re
from typing import Any

from agents.handlers.base import AgentHandler, HandlerRequest, PermanentHandlerError
from agents.reference.text import tokenize

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


class ReferenceHandler(AgentHandler):
    """Dispatches ``request.intent`` to the method ``intent_<intent with underscores>``."""

    def handle(self, request: HandlerRequest, ctx) -> Any:
        if request.intent not in self.intents:
            raise PermanentHandlerError(
                f"{self.name} does not serve intent {request.intent!r}; "
                f"it serves {', '.join(self.intents)}",
                details={"intent": request.intent, "supported": list(self.intents)},
            )
        payload = request.payload if request.payload is not None else {}
        if not isinstance(payload, dict):
            raise PermanentHandlerError(
                f"payload must be a JSON object, got {type(payload).__name__}"
            )
        check_cancelled(ctx)
        method = getattr(self, "intent_" + request.intent.replace("-", "_"))
        return method(snake_case_keys(payload), ctx)

    def config_value(self, ctx, key: str, default: Any = None) -> Any:
        """A setting from the run's agent config, falling back to the handler default."""
        config = getattr(ctx, "config", None) or {}
        if key in config:
            return config[key]
        return self.default_config.get(key, default)


def snake_case_keys(payload: dict) -> dict:
    """Accept ``maxSentences`` as well as ``max_sentences``.

    The REST API speaks camelCase while Python callers and the CLI tend to write
    snake_case; handlers read snake_case only. An explicit snake_case key wins.
    """
    normalized = dict(payload)
    for key, value in payload.items():
        if isinstance(key, str):
            snake = _CAMEL_BOUNDARY.sub("_", key).lower()
            normalized.setdefault(snake, value)
    return normalized


def check_cancelled(ctx) -> None:
    """Called between stages: a cancelled or timed-out run stops doing work nobody will read."""
    if ctx.cancelled:
        raise PermanentHandlerError("cancelled")


def require_text(payload: dict, keys: tuple[str, ...] = ("text",), *, label: str = "") -> str:
    """The first present key among ``keys``; it must be a non-blank string."""
    for key in keys:
        if key in payload and payload[key] is not None:
            value = payload[key]
            if not isinstance(value, str):
                raise PermanentHandlerError(
                    f"payload.{key} must be a string, got {type(value).__name__}",
                    details={"field": key},
                )
            if not value.strip():
                raise PermanentHandlerError(f"payload.{key} is empty", details={"field": key})
            return value
    name = label or keys[0]
    raise PermanentHandlerError(
        f"payload.{name} is required (a non-empty string)", details={"field": name}
    )


def optional_str(payload: dict, key: str, default: str = "") -> str:
    value = payload.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise PermanentHandlerError(
            f"payload.{key} must be a string, got {type(value).__name__}", details={"field": key}
        )
    return value.strip()


def optional_int(payload: dict, key: str, default: int, *, minimum: int, maximum: int) -> int:
    value = payload.get(key)
    if value is None:
        return default
    # bool is an int subclass; `true` as a count is a client bug, not the number 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise PermanentHandlerError(
            f"payload.{key} must be an integer, got {type(value).__name__}",
            details={"field": key},
        )
    if not minimum <= value <= maximum:
        raise PermanentHandlerError(
            f"payload.{key} must be between {minimum} and {maximum}, got {value}",
            details={"field": key},
        )
    return value


def optional_float(
    payload: dict, key: str, default: float | None, *, minimum: float, maximum: float
) -> float | None:
    value = payload.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PermanentHandlerError(
            f"payload.{key} must be a number, got {type(value).__name__}", details={"field": key}
        )
    if not minimum <= value <= maximum:
        raise PermanentHandlerError(
            f"payload.{key} must be between {minimum} and {maximum}, got {value}",
            details={"field": key},
        )
    return float(value)


def optional_str_list(payload: dict, key: str) -> list[str]:
    """A list of strings; a comma-separated string is accepted as a convenience."""
    value = payload.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise PermanentHandlerError(
            f"payload.{key} must be a list of strings", details={"field": key}
        )
    return [item.strip() for item in value if item.strip()]


def optional_choice(payload: dict, key: str, choices: tuple[str, ...], default: str) -> str:
    value = optional_str(payload, key, default).lower() or default
    if value not in choices:
        raise PermanentHandlerError(
            f"payload.{key} must be one of {', '.join(choices)}, got {value!r}",
            details={"field": key, "choices": list(choices)},
        )
    return value


def record_tokens(ctx, text_in: str, text_out: str | list[str]) -> None:
    """tokens_in / tokens_out count words, the unit a model-backed agent would be billed in."""
    if isinstance(text_out, list):
        text_out = " ".join(text_out)
    ctx.metric("tokens_in", len(tokenize(text_in)))
    ctx.metric("tokens_out", len(tokenize(text_out)))
