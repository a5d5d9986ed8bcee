from __future__ import annotations

import pytest

import tests.orchestration.handlers  # noqa: F401  (registers the test handlers)
from agents.choices import AgentStatus
from orchestration.policies import LocalPolicyStore, policy_store_reset
from tests.factories import AgentFactory, CapabilityFactory
from tests.orchestration.handlers import CALLS


@pytest.fixture(autouse=True)
def fresh_policy_state():
    """Every test starts with closed circuits and empty rate-limit windows."""
    policy_store_reset(LocalPolicyStore())
    CALLS.clear()
    yield
    policy_store_reset(None)


@pytest.fixture
def make_agent(tenant_a):
    def make(
        name: str, handler: str, intents=(), status=AgentStatus.ACTIVE, config=None, tenant=None
    ):
        organization = (tenant or tenant_a).organization
        agent = AgentFactory(
            organization=organization,
            name=name,
            slug=name.lower(),
            handler=handler,
            status=status,
            config=config or {"retry": {"base_delay_ms": 1}},
        )
        for intent in intents:
            CapabilityFactory(agent=agent, name=intent)
        return agent

    return make
