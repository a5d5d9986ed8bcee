from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from agents.choices import AgentKind


class HandlerError(Exception):
    """A handler failure with a message fit for the run record."""

    retryable: ClassVar[bool] = False
    # Whether the failure says something about the agent's health (and so feeds its circuit).
    counts_for_circuit: ClassVar[bool] = True

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.details = details


class RetryableError(HandlerError):
    """A transient failure: the orchestrator retries it with backoff."""

    retryable = True


class PermanentHandlerError(HandlerError):
    """A failure that another attempt cannot fix (bad input, a 4xx from a remote agent).

    It is the request's fault, not the agent's, so it does not count against the circuit
    (Resilience4j calls these ignored exceptions): three malformed requests must not
    shut an agent off for everyone.
    """

    counts_for_circuit = False


@dataclass(frozen=True)
class HandlerRequest:
    """What a handler is asked to do. Identity comes from the run, never from the payload."""

    run_id: str
    agent: str
    intent: str
    payload: Any
    organization: str
    attempt: int = 1
    objective: str = ""
    dataset_id: str | None = None
    user_id: str | None = None
    context: dict = field(default_factory=dict)


class AgentHandler:
    """Base class of agent code. Subclasses declare metadata and implement handle().

    One instance per process serves every run, so keep per-run state in ``ctx``,
    not on ``self``.
    """

    key: ClassVar[str]
    name: ClassVar[str]
    kind: ClassVar[str] = AgentKind.COPILOT
    version: ClassVar[str] = "1.0.0"
    intents: ClassVar[tuple[str, ...]] = ()
    owner_team: ClassVar[str] = ""
    description: ClassVar[str] = ""
    default_config: ClassVar[dict] = {}

    def handle(self, request: HandlerRequest, ctx) -> Any:  # pragma: no cover - interface
        raise NotImplementedError
