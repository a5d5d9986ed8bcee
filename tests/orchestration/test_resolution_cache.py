"""Intent resolution's per-process cache of agent definitions.

The rows one request read serve the next while the definitions' version in Redis stands.
Any change of an agent, its intents or its config rows moves the version -- in this process
through agents.signals.definitions_changed, in another as a moved version -- and the next
request reads the definitions again.
"""

from __future__ import annotations

import pytest

from agents.choices import AgentStatus
from agents.models import Agent, AgentConfig
from agents.services import agent_set_intents, agent_set_status
from orchestration.policies import RedisPolicyStore, policy_store, policy_store_reset
from tests.faults.harness import ApiServer
from tests.faults.servers import free_port

pytestmark = pytest.mark.django_db(transaction=True)

RESOLUTION = 1  # statements of a resolution that reads the definitions


def post(tenant, intent: str = "nap", **body):
    return tenant.client.post("/api/orchestrate", {"intent": intent, **body}, format="json")


def assert_disabled(response):
    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "AGENT_DISABLED"


@pytest.fixture
def sleeper(redis_policies, tenant_a, make_agent):
    agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
    assert post(tenant_a).status_code == 200  # this process has read its definition
    return agent


def queries_of(django_assert_num_queries, count: int, tenant, **body):
    with django_assert_num_queries(count):
        return post(tenant, **body)


def test_a_second_request_reads_no_definition(sleeper, tenant_a, django_assert_max_num_queries):
    with django_assert_max_num_queries(3) as captured:
        assert post(tenant_a).status_code == 200
    assert not [q for q in captured.captured_queries if "agent_capabilities" in q["sql"]]


def test_a_status_change_in_bulk_is_seen_at_once(sleeper, tenant_a):
    agent_set_status(agents=[sleeper], status=AgentStatus.PAUSED)  # one UPDATE, no post_save
    assert_disabled(post(tenant_a))
    agent_set_status(agents=[sleeper], status=AgentStatus.ACTIVE)
    assert post(tenant_a).status_code == 200


def test_new_intents_and_config_rows_are_seen_at_once(sleeper, tenant_a, redis_policies):
    agent_set_intents(agent=sleeper, intents=["nap", "doze"])  # bulk_create
    response = post(tenant_a, "doze")
    assert response.status_code == 200, response.content
    AgentConfig.objects.create(agent=sleeper, key="rate_limit", value={"limit": 1, "window_s": 60})
    # The limit applies from a full allowance: forget the requests made under the old one.
    redis_policies.client.delete(*redis_policies.client.keys(f"{redis_policies.prefix}tat:*"))
    assert post(tenant_a).status_code == 200
    response = post(tenant_a)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "RATE_LIMITED"


def test_another_process_change_is_seen_once_it_moves_the_version(
    sleeper, tenant_a, django_assert_num_queries
):
    # Another process pauses the agent: the row changes, no signal in this process ...
    Agent.objects.filter(pk=sleeper.pk).update(status=AgentStatus.PAUSED)
    # ... which serves the definitions it read until that process moves the version.
    assert queries_of(django_assert_num_queries, 3, tenant_a).status_code == 200
    policy_store().definitions_bump()
    with django_assert_num_queries(1 + RESOLUTION):  # key lookup, resolution; no run
        assert_disabled(post(tenant_a))


def test_kept_definitions_cost_no_round_trip_of_their_own(
    sleeper, tenant_a, redis_policies, monkeypatch
):
    """Their version is read in the rate-limit decision's round trip (one pipeline)."""
    import redis.client

    sent: list[str] = []
    execute, pipeline = redis.client.Redis.execute_command, redis.client.Pipeline.execute
    pool = redis_policies.client.connection_pool

    def counting_execute(self, *args, **kwargs):
        if self.connection_pool is pool:
            sent.append(" ".join(str(a) for a in args[:2]))
        return execute(self, *args, **kwargs)

    def counting_pipeline(self, *args, **kwargs):
        if self.connection_pool is pool:
            sent.append("pipeline(" + " ".join(str(c[0][0]) for c in self.command_stack) + ")")
        return pipeline(self, *args, **kwargs)

    monkeypatch.setattr(redis.client.Redis, "execute_command", counting_execute)
    monkeypatch.setattr(redis.client.Pipeline, "execute", counting_pipeline)
    assert post(tenant_a).status_code == 200
    # Then, perhaps, the call's outcome (circuit_record) while its window fills.
    assert sent[0] == "pipeline(EVALSHA GET)", sent
    assert not [c for c in sent if c.startswith("GET")], sent


def test_a_moved_version_does_not_charge_the_rate_limit_twice(sleeper, tenant_a, redis_policies):
    AgentConfig.objects.create(agent=sleeper, key="rate_limit", value={"limit": 2, "window_s": 60})
    redis_policies.client.delete(*redis_policies.client.keys(f"{redis_policies.prefix}tat:*"))
    assert post(tenant_a).status_code == 200  # definitions read afresh (the change above)
    # Another process moves the version: this request was decided on the kept definitions,
    # then resolved again; same agent, same limits, so that one decision stands.
    policy_store().definitions_bump()
    assert post(tenant_a).status_code == 200
    response = post(tenant_a)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "RATE_LIMITED"


def test_definitions_are_kept_no_longer_than_the_setting(sleeper, tenant_a, settings):
    Agent.objects.filter(pk=sleeper.pk).update(status=AgentStatus.PAUSED)
    settings.AGENT_RESOLUTION_CACHE_SECONDS = 0
    assert_disabled(post(tenant_a))


def test_an_unreachable_store_means_reading_the_definitions(
    sleeper, tenant_a, django_assert_num_queries
):
    with free_port_store() as store:
        assert store.definitions_version() is None
        assert queries_of(django_assert_num_queries, 3 + RESOLUTION, tenant_a).status_code == 200
        assert queries_of(django_assert_num_queries, 3 + RESOLUTION, tenant_a).status_code == 200


def test_a_process_local_store_keeps_no_definitions(
    tenant_a, make_agent, django_assert_num_queries
):
    # The autouse store is process-local: it cannot hear other processes' changes.
    make_agent("Sleeper", "test-sleep", intents=["nap"])
    assert not policy_store().shared
    assert post(tenant_a).status_code == 200  # what any first request reads (live config)
    for _ in range(2):
        assert queries_of(django_assert_num_queries, 3 + RESOLUTION, tenant_a).status_code == 200


class free_port_store:
    """A Redis policy store whose server does not answer (nothing listens on the port)."""

    def __enter__(self) -> RedisPolicyStore:
        self.store = RedisPolicyStore(f"redis://127.0.0.1:{free_port()}/0")
        policy_store_reset(self.store)
        return self.store

    def __exit__(self, *exc) -> None:
        self.store.close()
        policy_store_reset(None)


@pytest.mark.slow
def test_an_edit_reaches_a_running_api_server(tenant_a, make_agent):
    # The server and this process share the settings' Redis store, as in production.
    policy_store_reset(None)
    assert policy_store().shared
    agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
    api = ApiServer().start()
    try:
        with api.client(tenant_a.raw_key) as client:

            def status() -> int:
                return client.post("/api/orchestrate", json={"intent": "nap"}).status_code

            assert [status(), status()] == [200, 200]  # the second from the server's cache
            agent.status = AgentStatus.PAUSED
            agent.save()  # as the admin does
            assert status() == 409
            agent.status = AgentStatus.ACTIVE
            agent.save()
            assert status() == 200
    finally:
        api.stop()
