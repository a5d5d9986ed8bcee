"""Read queries of the agents app."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from agents.models import Agent, AgentCapability, Dataset, Tool


def agent_list() -> QuerySet[Agent]:
    return Agent.objects.prefetch_related(
        Prefetch("capabilities", queryset=AgentCapability.objects.only("id", "agent_id", "name"))
    )


def tool_list() -> QuerySet[Tool]:
    return Tool.objects.select_related("agent")


def dataset_list() -> QuerySet[Dataset]:
    return Dataset.objects.all()
