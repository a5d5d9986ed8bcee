from __future__ import annotations

import os
import uuid

import pytest

import tests.orchestration.handlers  # noqa: F401  (registers the test handlers)
from agents.choices import AgentStatus
from orchestration.policies import LocalPolicyStore, RedisPolicyStore, policy_store_reset
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
def redis_policies():
    """The policies in Redis, as in production (under a prefix of this test's own)."""
    prefix = f"acp:test:{uuid.uuid4().hex[:12]}:"
    store = RedisPolicyStore(
        os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), key_prefix=prefix
    )
    policy_store_reset(store)
    yield store
    keys = list(store.client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        store.client.delete(*keys)
    store.close()


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
