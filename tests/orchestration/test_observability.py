"""/metrics (Prometheus) and structured logs: docs/OBSERVABILITY.md."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
from django.db import DatabaseError
from prometheus_client.parser import text_string_to_metric_families

from agents.handlers.base import AgentHandler
from agents.handlers.registry import register
from orchestration import bus
from orchestration.choices import EventType, NodeStatus
from orchestration.models import OrchestratorEvent, OrchestratorNode
from orchestration.observability.logging import formatter, run_log_fields
from orchestration.policies import CircuitState, policy_store
from runs import services as run_services
from runs.choices import RunMode, RunStatus
from runs.models import AgentRun
from tests.factories import RunFactory
from tests.orchestration import workers

pytestmark = pytest.mark.django_db

REMOTE = "203.0.113.7"  # TEST-NET-3: only ever a REMOTE_ADDR value here, never contacted
HANDLER_LOG = "tests.observability.handler"


@register
class LoggingHandler(AgentHandler):
    """Logs from inside the handler (its pool thread), as a real agent would."""

    key = "test-observability-log"

    def handle(self, request, ctx):
        logging.getLogger(HANDLER_LOG).info("inside the handler")
        return {"logged": True}


def scrape(client, **extra) -> dict[tuple[str, tuple], float]:
    """GET /metrics, parsed: {(sample name, sorted labels): value}; fails on a bad document."""
    response = client.get("/metrics", **extra)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return samples(response.content.decode())


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in found, f"duplicate series {key}"
            found[key] = sample.value
    return found


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def orchestrate(tenant, body):
    return tenant.client.post("/api/orchestrate", body, format="json")


class TestScrape:
    def test_the_document_parses_and_a_finished_run_moves_its_counters(
        self, client, tenant_a, make_agent
    ):
        make_agent("Sleeper", "test-sleep", intents=["nap"])
        labels = {"agent": "org-a/sleeper", "intent": "nap", "status": RunStatus.SUCCESS}
        before = scrape(client)

        assert (
            orchestrate(tenant_a, {"intent": "nap", "payload": {"sleep_ms": 5}}).status_code == 200
        )

        after = scrape(client)
        assert (
            value(after, "acp_runs_total", **labels) - value(before, "acp_runs_total", **labels)
            == 1
        )
        count = "acp_run_duration_seconds_count"
        assert (
            value(after, count, agent="org-a/sleeper") - value(before, count, agent="org-a/sleeper")
            == 1
        )
        # The sleep handler makes one "clock" tool call.
        tools = "acp_tool_executions_total"
        assert value(after, tools, status="success") - value(before, tools, status="success") == 1

    def test_a_failed_run_is_counted_under_its_status(self, client, tenant_a, make_agent):
        make_agent("Refuser", "test-fail", intents=["refuse"])
        labels = {"agent": "org-a/refuser", "intent": "refuse", "status": RunStatus.FAILED}
        before = value(scrape(client), "acp_runs_total", **labels)
        assert orchestrate(tenant_a, {"intent": "refuse"}).status_code == 502
        assert value(scrape(client), "acp_runs_total", **labels) - before == 1

    def test_a_429_moves_the_rate_limited_counter(self, client, tenant_a, make_agent):
        make_agent(
            "Limited",
            "test-sleep",
            intents=["nap"],
            config={"rate_limit": {"limit": 1, "window_s": 30}},
        )

        def refused(found) -> float:
            return sum(
                v
                for (name, labels), v in found.items()
                if name == "acp_rate_limited_total" and ("agent", "org-a/limited") in labels
            )

        before = refused(scrape(client))
        assert orchestrate(tenant_a, {"intent": "nap"}).status_code == 200
        assert orchestrate(tenant_a, {"intent": "nap"}).status_code == 429
        assert refused(scrape(client)) - before == 1

    def test_the_fleet_gauges_read_the_database_and_the_policy_store(
        self, client, tenant_a, make_agent
    ):
        sleeper = make_agent("Sleeper", "test-sleep", intents=["nap"])
        make_agent("Other", "test-sleep", intents=["other"])
        RunFactory.create_batch(3, agent=sleeper, status=RunStatus.PENDING)
        RunFactory(agent=sleeper, status=RunStatus.SUCCESS)
        OrchestratorNode.objects.create(node_id="n-active", status=NodeStatus.ACTIVE)
        OrchestratorNode.objects.create(node_id="n-draining", status=NodeStatus.DRAINING)
        policy_store().circuit_force(agent_key=str(sleeper.pk), state=CircuitState.OPEN)

        found = scrape(client)
        pending = AgentRun.objects.filter(status=RunStatus.PENDING).count()
        assert pending == 3
        assert value(found, "acp_pending_runs") == pending
        assert value(found, "acp_nodes", status=NodeStatus.ACTIVE) == 1
        assert value(found, "acp_nodes", status=NodeStatus.DRAINING) == 1
        assert ("acp_nodes", (("status", NodeStatus.FAILED),)) in found  # zero, not missing
        assert value(found, "acp_circuit_state", agent="org-a/sleeper") == 2
        assert found[("acp_circuit_state", (("agent", "org-a/other"),))] == 0

    def test_event_publish_failures_are_counted(self, client, monkeypatch):
        before = value(scrape(client), "acp_event_publish_failures_total")

        def unavailable(**kwargs):
            raise DatabaseError("the events table is gone")

        monkeypatch.setattr(OrchestratorEvent.objects, "create", unavailable)
        assert bus.publish(EventType.CONFIG_UPDATED, {}) is None
        monkeypatch.undo()
        assert value(scrape(client), "acp_event_publish_failures_total") - before == 1

    def test_events_not_broadcast_are_counted(self, client, monkeypatch):
        """A batch Redis refuses is dropped from live delivery, and counted."""
        before = value(scrape(client), "acp_event_broadcasts_dropped_total")
        monkeypatch.setattr(bus, "_redis_client", lambda: None)  # no client: the send fails
        bus._send(
            [({"id": 1, "type": EventType.CONFIG_UPDATED}, None), ({"id": 2, "type": "x"}, None)]
        )
        monkeypatch.undo()
        assert value(scrape(client), "acp_event_broadcasts_dropped_total") - before == 2


class TestAccess:
    def test_loopback_callers_are_served_by_default(self, client):
        assert client.get("/metrics").status_code == 200
        assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200

    def test_other_addresses_are_refused_in_plain_text(self, client):
        response = client.get("/metrics", REMOTE_ADDR=REMOTE)
        assert response.status_code == 403
        assert response["Content-Type"].startswith("text/plain")
        assert b"METRICS_TOKEN" in response.content

    def test_remote_scrapes_can_be_allowed(self, client, settings):
        settings.METRICS_ALLOW_REMOTE = True
        assert client.get("/metrics", REMOTE_ADDR=REMOTE).status_code == 200

    def test_a_token_is_required_from_everywhere_once_set(self, client, settings):
        settings.METRICS_TOKEN = "scrape-secret"
        for address in (REMOTE, "127.0.0.1"):
            missing = client.get("/metrics", REMOTE_ADDR=address)
            assert missing.status_code == 401
            assert missing["WWW-Authenticate"].startswith("Bearer")
            assert missing["Content-Type"].startswith("text/plain")
            wrong = client.get("/metrics", REMOTE_ADDR=address, HTTP_AUTHORIZATION="Bearer not-it")
            assert wrong.status_code == 401
        scrape(client, REMOTE_ADDR=REMOTE, HTTP_AUTHORIZATION="Bearer scrape-secret")

    def test_only_get(self, client):
        assert client.post("/metrics").status_code == 405


# --- Several processes ----------------------------------------------------------------------

EXECUTE_ONE_RUN = textwrap.dedent(
    """
    import sys

    import django

    django.setup()
    from orchestration.services.execution import run_execute
    from runs.models import AgentRun

    assert run_execute(run=AgentRun.objects.get(pk=sys.argv[1]))
    """
)
SCRAPE = textwrap.dedent(
    """
    import sys

    import django

    django.setup()
    from django.test import Client

    response = Client().get("/metrics")
    assert response.status_code == 200, response.status_code
    sys.stdout.write(response.content.decode())
    """
)


def python(script: str, *args: str, env: dict) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=workers.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_multiprocess_mode_sums_every_process_and_reports_fleet_gauges_once(
    tenant_a, make_agent, tmp_path
):
    agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
    runs = [
        run_services.run_create(
            organization=tenant_a.organization,
            agent=agent,
            intent="nap",
            input={"sleep_ms": 1},
            mode=RunMode.ASYNC,
        )
        for _ in range(2)
    ]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": workers.test_database_url(),
        "AGENT_HANDLER_MODULES": workers.TEST_HANDLER_MODULES,
        "NODE_AUTOREGISTER": "false",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "LOG_FORMAT": "json",
    }
    for run in runs:  # one process per run, one after the other
        python(EXECUTE_ONE_RUN, str(run.pk), env=env)
    assert len(list(tmp_path.glob("counter_*.db"))) >= 2  # two processes wrote their own file

    text = python(SCRAPE, env=env)
    found = samples(text)  # also fails on any duplicated series
    labels = {"agent": "org-a/sleeper", "intent": "nap", "status": RunStatus.SUCCESS}
    assert value(found, "acp_runs_total", **labels) == 2
    assert value(found, "acp_run_duration_seconds_count", agent="org-a/sleeper") == 2
    assert value(found, "acp_tool_executions_total", status="success") == 2
    families = [family.name for family in text_string_to_metric_families(text)]
    for gauge in ("acp_pending_runs", "acp_nodes", "acp_circuit_state"):
        assert families.count(gauge) == 1
    assert value(found, "acp_pending_runs") == 0


# --- Logs -------------------------------------------------------------------------------------


@pytest.fixture
def json_lines():
    """Every line the root logger emits, rendered by the production JSON formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter("json"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)


def test_a_line_logged_by_a_handler_carries_the_runs_identity(tenant_a, make_agent, json_lines):
    make_agent("Logger", "test-observability-log", intents=["log"])
    response = orchestrate(tenant_a, {"intent": "log"})
    assert response.status_code == 200, response.json()
    logging.getLogger(HANDLER_LOG).info("after the run")
    run = AgentRun.objects.get(pk=response.json()["runId"])

    lines = {line["message"]: line for line in json_lines() if line["logger"] == HANDLER_LOG}
    inside = lines["inside the handler"]
    assert inside["run_id"] == str(run.pk)
    assert inside["agent"] == "logger"
    assert inside["organization"] == "org-a"
    assert inside["node"] == run.node_id
    assert inside["attempt"] == run.attempt == 1
    assert inside["level"] == "info"
    assert inside["timestamp"]
    # The fields end with the run: nothing leaks into what this thread logs next.
    assert "run_id" not in lines["after the run"]
    assert run_log_fields() == {}


def test_console_format_is_one_readable_line():
    record = logging.LogRecord("acp.test", logging.WARNING, __file__, 1, "hello %s", ("x",), None)
    line = formatter("console").format(record)
    assert "hello x" in line
    assert not line.lstrip().startswith("{")
    with pytest.raises(ValueError):
        formatter("xml")
