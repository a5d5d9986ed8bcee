"""The handler registry: code declares handlers, definitions in the database name them by key.

Handlers register with the ``@register`` decorator in modules listed in the
AGENT_HANDLER_MODULES setting, imported once when the app is ready. Each handler
class is instantiated once per process, on first use, and reused for every run.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from importlib import import_module

from agents.handlers.base import AgentHandler


class UnknownHandler(LookupError):
    pass


@dataclass(frozen=True)
class AgentDefinition:
    """A definition seeded into organizations: its handler key may be empty (a DRAFT idea)."""

    name: str
    kind: str
    version: str
    intents: tuple[str, ...]
    owner_team: str
    handler: str = ""
    description: str = ""
    default_config: dict | None = None


class HandlerRegistry:
    def __init__(self) -> None:
        self._classes: dict[str, type[AgentHandler]] = {}
        self._instances: dict[str, AgentHandler] = {}
        self._definitions: dict[str, AgentDefinition] = {}
        self._lock = threading.Lock()

    def register(self, handler_class: type[AgentHandler]) -> type[AgentHandler]:
        key = handler_class.key
        existing = self._classes.get(key)
        if existing is not None and existing is not handler_class:
            raise ValueError(f"handler key {key!r} is already registered by {existing!r}")
        self._classes[key] = handler_class
        if getattr(handler_class, "name", None):
            self.declare(
                AgentDefinition(
                    name=handler_class.name,
                    kind=handler_class.kind,
                    version=handler_class.version,
                    intents=tuple(handler_class.intents),
                    owner_team=handler_class.owner_team,
                    handler=key,
                    description=handler_class.description,
                    default_config=dict(handler_class.default_config),
                )
            )
        return handler_class

    def declare(self, definition: AgentDefinition) -> None:
        """Declare a definition that organizations get seeded with (with or without handler)."""
        self._definitions[definition.name] = definition

    def unregister(self, key: str) -> None:
        """For tests that register throw-away handlers."""
        self._classes.pop(key, None)
        self._instances.pop(key, None)
        for name, definition in list(self._definitions.items()):
            if definition.handler == key:
                del self._definitions[name]

    def is_registered(self, key: str) -> bool:
        return bool(key) and key in self._classes

    def keys(self) -> list[str]:
        return sorted(self._classes)

    def definitions(self) -> list[AgentDefinition]:
        return sorted(self._definitions.values(), key=lambda d: d.name)

    def get(self, key: str) -> AgentHandler:
        instance = self._instances.get(key)
        if instance is not None:
            return instance
        handler_class = self._classes.get(key)
        if handler_class is None:
            raise UnknownHandler(key)
        with self._lock:
            # Two threads may race to create the first instance; keep exactly one.
            instance = self._instances.get(key)
            if instance is None:
                instance = handler_class()
                self._instances[key] = instance
        return instance

    def autodiscover(self, modules: list[str]) -> None:
        for module in modules:
            import_module(module)


registry = HandlerRegistry()
register = registry.register
