from __future__ import annotations

import uuid

from django.utils.text import slugify
from rest_framework import serializers

from agents.models import Agent, Dataset, Tool
from config.serializers import StrictTypesMixin


class AgentSerializer(StrictTypesMixin, serializers.ModelSerializer):
    intents = serializers.ListField(
        child=serializers.CharField(max_length=120), required=False, allow_empty=True
    )
    config = serializers.DictField(required=False)
    slug = serializers.SlugField(max_length=120, required=False)

    class Meta:
        model = Agent
        fields = [
            "id",
            "name",
            "slug",
            "kind",
            "status",
            "version",
            "description",
            "owner_team",
            "handler",
            "intents",
            "config",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]
        # Uniqueness per organization is checked in validate(): the organization is not a field.
        validators: list = []

    def to_representation(self, instance: Agent) -> dict:
        data = super().to_representation(instance)
        data["intents"] = [capability.name for capability in instance.capabilities.all()]
        return data

    def validate(self, attrs: dict) -> dict:
        organization = self.context["request"].auth.organization
        others = Agent.objects.filter(organization=organization)
        if self.instance is not None:
            others = others.exclude(pk=self.instance.pk)
        errors = {}
        if "name" in attrs and others.filter(name=attrs["name"]).exists():
            errors["name"] = ["An agent with this name already exists."]
        slug = attrs.get("slug")
        if self.instance is None and not slug and "name" in attrs:
            # Derived from the name here rather than in agent_create, so it is checked for
            # uniqueness like a given one; a name without ASCII letters or digits gets a
            # generated slug.
            slug = slugify(attrs["name"])[:120] or f"agent-{uuid.uuid4().hex[:12]}"
            attrs["slug"] = slug
        if slug and others.filter(slug=slug).exists():
            errors["slug"] = ["An agent with this slug already exists."]
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


class ToolSerializer(StrictTypesMixin, serializers.ModelSerializer):
    agent = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)

    class Meta:
        model = Tool
        fields = [
            "id",
            "name",
            "slug",
            "description",
            "agent",
            "input_schema",
            "output_schema",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "agent", "created_at", "updated_at"]
        validators: list = []

    def validate_slug(self, value: str) -> str:
        organization = self.context["request"].auth.organization
        others = Tool.objects.filter(organization=organization, slug=value)
        if self.instance is not None:
            others = others.exclude(pk=self.instance.pk)
        if others.exists():
            raise serializers.ValidationError("A tool with this slug already exists.")
        return value


class DatasetSerializer(StrictTypesMixin, serializers.ModelSerializer):
    class Meta:
        model = Dataset
        fields = [
            "id",
            "name",
            "slug",
            "kind",
            "description",
            "source",
            "metadata",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]
        validators: list = []

    def validate_slug(self, value: str) -> str:
        organization = self.context["request"].auth.organization
        others = Dataset.objects.filter(organization=organization, slug=value)
        if self.instance is not None:
            others = others.exclude(pk=self.instance.pk)
        if others.exists():
            raise serializers.ValidationError("A dataset with this slug already exists.")
        return value
