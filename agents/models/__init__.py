from __future__ import annotations

from agents.models.base import BaseModel
from agents.models.catalog import Agent, AgentCapability, AgentConfig, Dataset, Tool
from agents.models.tenancy import ApiKey, Organization, OrganizationMember

__all__ = [
    "Agent",
    "AgentCapability",
    "AgentConfig",
    "ApiKey",
    "BaseModel",
    "Dataset",
    "Organization",
    "OrganizationMember",
    "Tool",
]
