"""The handler protocol: what an agent's code looks like, and the registry that finds it."""

from __future__ import annotations

from agents.handlers.base import (
    AgentHandler,
    HandlerError,
    HandlerRequest,
    PermanentHandlerError,
    RetryableError,
)
from agents.handlers.registry import registry

__all__ = [
    "AgentHandler",
    "HandlerError",
    "HandlerRequest",
    "PermanentHandlerError",
    "RetryableError",
    "registry",
]
