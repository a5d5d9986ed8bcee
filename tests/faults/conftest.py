"""Fixtures of the fault scenarios: a private Celery queue, a fast fleet, test agents."""

from __future__ import annotations

import pytest

import tests.orchestration.handlers  # noqa: F401  (registers the test handlers)
from agents.choices import AgentStatus
from tests.factories import AgentFactory, CapabilityFactory
from tests.faults.harness import fleet_configure
from tests.orchestration.workers import private_queue

# High enough that no policy limit shapes a load scenario; retries back off at once.
LOAD_AGENT_CONFIG = {"rate_limit": {"limit": 1_000_000}, "retry": {"base_delay_ms": 1}}


@pytest.fixture
def queue(settings) -> str:
    """A Celery queue of this test alone: runs the test (or its reaper) sends go there."""
    settings.RUN_DEFAULT_QUEUE = private_queue()
    return settings.RUN_DEFAULT_QUEUE


@pytest.fixture
def fleet(db) -> dict:
    """The fast fleet settings (harness.FAST_FLEET), live before any worker starts."""
    return fleet_configure()


@pytest.fixture
def make_agent(tenant_a):
    def make(name: str, handler: str, intents=(), config=None, tenant=None):
        organization = (tenant or tenant_a).organization
        agent = AgentFactory(
            organization=organization,
            name=name,
            slug=name.lower(),
            handler=handler,
            status=AgentStatus.ACTIVE,
            config=LOAD_AGENT_CONFIG if config is None else config,
        )
        for intent in intents:
            CapabilityFactory(agent=agent, name=intent)
        return agent

    return make
