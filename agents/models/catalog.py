from __future__ import annotations

from django.db import models

from agents.choices import AgentKind, AgentStatus, DatasetKind
from agents.models.base import BaseModel, choices_check
from agents.models.tenancy import Organization


class Agent(BaseModel):
    """An agent definition: what can run, edited by admins, bound to a handler by key."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="agents")
    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=120)
    kind = models.CharField(max_length=16, choices=AgentKind.choices, default=AgentKind.COPILOT)
    status = models.CharField(max_length=16, choices=AgentStatus.choices, default=AgentStatus.DRAFT)
    description = models.TextField(blank=True, default="")
    version = models.CharField(max_length=32, default="1.0.0")
    config = models.JSONField(default=dict, blank=True)
    # The key of a registered handler ("http" is the built-in remote agent); empty = none.
    handler = models.CharField(max_length=120, blank=True, default="")
    owner_team = models.CharField(max_length=120, blank=True, default="")

    class Meta:
        db_table = "agents"
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "slug"], name="agent_slug_unique_per_org"
            ),
            models.UniqueConstraint(
                fields=["organization", "name"], name="agent_name_unique_per_org"
            ),
            choices_check("kind", AgentKind, "agent_kind_valid"),
            choices_check("status", AgentStatus, "agent_status_valid"),
        ]

    def __str__(self) -> str:
        return self.name


class AgentCapability(BaseModel):
    """An intent an agent serves."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="capabilities")
    name = models.CharField(max_length=120)
    config = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "agent_capabilities"
        verbose_name_plural = "agent capabilities"
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["agent", "name"], name="capability_unique_per_agent"),
        ]
        indexes = [
            # Intent resolution: "which ACTIVE agents of this organization serve intent X".
            models.Index(fields=["name"], name="capability_name_idx"),
        ]

    def __str__(self) -> str:
        return self.name


class AgentConfig(BaseModel):
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="config_entries")
    key = models.CharField(max_length=120)
    value = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "agent_configs"
        ordering = ["key"]
        constraints = [
            models.UniqueConstraint(fields=["agent", "key"], name="agent_config_key_unique"),
        ]

    def __str__(self) -> str:
        return self.key


class Tool(BaseModel):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="tools")
    agent = models.ForeignKey(
        Agent, on_delete=models.SET_NULL, null=True, blank=True, related_name="tools"
    )
    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=120)
    description = models.TextField(blank=True, default="")
    input_schema = models.JSONField(default=dict, blank=True)
    output_schema = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "tools"
        ordering = ["slug"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "slug"], name="tool_slug_unique_per_org"
            ),
        ]

    def __str__(self) -> str:
        return self.slug


class Dataset(BaseModel):
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="datasets"
    )
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=120)
    kind = models.CharField(
        max_length=16, choices=DatasetKind.choices, default=DatasetKind.DOCUMENTS
    )
    description = models.TextField(blank=True, default="")
    source = models.CharField(max_length=500, blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "datasets"
        ordering = ["slug"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "slug"], name="dataset_slug_unique_per_org"
            ),
            choices_check("kind", DatasetKind, "dataset_kind_valid"),
        ]

    def __str__(self) -> str:
        return self.slug
