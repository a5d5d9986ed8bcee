"""definitions_changed: an agent definition, its intents or its config rows changed.

Sent after every save or delete of an Agent, AgentCapability or AgentConfig (the model
signals below) and by the services that change them in bulk (agent_set_status,
agent_set_intents), which model signals do not see. Whatever keeps a copy of definitions
(intent resolution's per-process cache) listens to it. It may be sent inside a transaction
that later rolls back: a listener must treat it as "read again", never as "this happened".
"""

from __future__ import annotations

from django.db.models.signals import post_delete, post_save
from django.dispatch import Signal, receiver

from agents.models import Agent, AgentCapability, AgentConfig

definitions_changed = Signal()


def definitions_changed_send(sender=Agent) -> None:
    definitions_changed.send(sender=sender)


@receiver(post_save, sender=Agent)
@receiver(post_delete, sender=Agent)
@receiver(post_save, sender=AgentCapability)
@receiver(post_delete, sender=AgentCapability)
@receiver(post_save, sender=AgentConfig)
@receiver(post_delete, sender=AgentConfig)
def _definition_saved_or_deleted(sender, **kwargs) -> None:
    definitions_changed_send(sender)
