from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from agents.choices import AgentStatus, MemberRole
from agents.models import Agent, AgentCapability, Dataset, Organization, OrganizationMember, Tool
from runs.choices import RunStatus
from runs.models import AgentRun


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.com")
    password = factory.django.Password("correct horse battery staple")


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    slug = factory.Sequence(lambda n: f"org-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.title())


class MemberFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = OrganizationMember

    organization = factory.SubFactory(OrganizationFactory)
    user = factory.SubFactory(UserFactory)
    role = MemberRole.OPERATOR


class AgentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Agent

    organization = factory.SubFactory(OrganizationFactory)
    name = factory.Sequence(lambda n: f"Agent{n}")
    slug = factory.LazyAttribute(lambda o: o.name.lower())
    status = AgentStatus.ACTIVE
    version = "1.0.0"


class CapabilityFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AgentCapability

    agent = factory.SubFactory(AgentFactory)
    name = factory.Sequence(lambda n: f"intent-{n}")


class ToolFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tool

    organization = factory.SubFactory(OrganizationFactory)
    name = factory.Sequence(lambda n: f"Tool {n}")
    slug = factory.Sequence(lambda n: f"tool-{n}")


class DatasetFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Dataset

    organization = factory.SubFactory(OrganizationFactory)
    name = factory.Sequence(lambda n: f"Dataset {n}")
    slug = factory.Sequence(lambda n: f"dataset-{n}")


class RunFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AgentRun

    agent = factory.SubFactory(AgentFactory)
    organization = factory.LazyAttribute(lambda o: o.agent.organization)
    intent = "summarize"
    status = RunStatus.PENDING
    input = factory.LazyFunction(lambda: {"text": "hello"})
