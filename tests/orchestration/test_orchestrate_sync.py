"""POST /api/orchestrate in sync mode: every request becomes a persisted run."""

from __future__ import annotations

import pytest

from agents.choices import AgentStatus, MemberRole
from runs.choices import RunStatus
from runs.models import AgentRun, AgentRunMetric, RunStep, ToolExecution
from tests.orchestration.handlers import CALLS

pytestmark = pytest.mark.django_db


def post(tenant, body, **headers):
    return tenant.client.post("/api/orchestrate", body, format="json", **headers)


class TestSuccessfulRun:
    def test_one_row_success_with_input_output_and_timings(self, tenant_a, make_agent):
        make_agent("Sleeper", "test-sleep", intents=["nap"])
        response = post(tenant_a, {"intent": "nap", "payload": {"sleep_ms": 60}})
        assert response.status_code == 200, response.json()
        body = response.json()
        assert body["success"] is True
        assert body["status"] == "completed"
        assert body["agent"] == "Sleeper"
        assert body["intent"] == "nap"
        assert body["data"] == {"slept": 60, "echo": {"sleep_ms": 60}}
        assert body["metrics"]["attempts"] == 1
        assert body["metrics"]["responseOk"] is True
        assert body["timestamp"]

        run = AgentRun.objects.get()
        assert str(run.pk) == body["runId"]
        assert run.status == RunStatus.SUCCESS
        assert run.input == {"sleep_ms": 60}
        assert run.output == body["data"]
        assert run.started_at and run.completed_at
        assert run.duration_ms > 60
        assert run.metrics["durationMs"] == body["metrics"]["durationMs"]
        assert len(run.input_hash) == 64
        assert run.meta["mode"] == "sync"
        assert run.attempt == 1
        assert run.node_id

    @pytest.mark.django_db(transaction=True)
    def test_the_row_is_inserted_already_claimed_by_this_node(self, tenant_a, make_agent, settings):
        """No PENDING moment and no claim statement: the process that accepts a sync run
        executes it, so its row is RUNNING, attempt 1, on this node, with a lease from the
        INSERT on (what the handler sees of its own run, on its own connection)."""
        make_agent("Own row", "test-own-row", intents=["look"])
        body = post(tenant_a, {"intent": "look"}).json()
        assert body["data"] == {
            "status": "RUNNING",
            "attempt": 1,
            "node": settings.ORCHESTRATOR_NODE_ID,
            "leased": True,
            "queuedAtStart": True,
        }
        run = AgentRun.objects.get(pk=body["runId"])
        assert (run.status, run.attempt, run.node_id) == (
            RunStatus.SUCCESS,
            1,
            settings.ORCHESTRATOR_NODE_ID,
        )

    def test_tool_executions_steps_and_metrics_are_recorded_with_timings(
        self, tenant_a, make_agent
    ):
        make_agent("Sleeper", "test-sleep", intents=["nap"])
        run_id = post(tenant_a, {"intent": "nap", "payload": {"sleep_ms": 30}}).json()["runId"]
        execution = ToolExecution.objects.select_related("tool").get(run_id=run_id)
        assert execution.tool.slug == "clock"
        assert execution.tool.organization == tenant_a.organization  # created on first use
        assert execution.status == "success"
        assert execution.output == {"slept": 30}
        assert execution.duration_ms >= 30
        step = RunStep.objects.get(run_id=run_id)
        assert (step.name, step.status, step.result) == ("sleep", "success", {"ok": True})
        assert step.duration_ms >= 30
        names = set(AgentRunMetric.objects.filter(run_id=run_id).values_list("name", flat=True))
        assert {"tokens_in", "latency_ms", "attempts", "retries"} <= names

        detail = tenant_a.client.get(f"/api/runs/{run_id}/").json()
        assert detail["tool_executions"][0]["tool"] == "clock"
        assert detail["steps"][0]["name"] == "sleep"
        assert {m["name"] for m in detail["metric_rows"]} >= {"tokens_in", "attempts"}

    def test_a_failing_tool_is_recorded_and_the_run_follows_the_handler(self, tenant_a, make_agent):
        make_agent("Searcher", "test-tool-fail", intents=["search"])
        response = post(tenant_a, {"intent": "search"})
        assert response.status_code == 200
        executions = {
            e.tool.slug: e
            for e in ToolExecution.objects.select_related("tool").filter(
                run_id=response.json()["runId"]
            )
        }
        assert executions["flaky-search"].status == "failed"
        assert "index offline" in executions["flaky-search"].error
        assert executions["fallback-search"].status == "success"


class TestFailures:
    def test_failing_handler_gives_502_and_a_failed_run(self, tenant_a, make_agent):
        make_agent("Refuser", "test-fail", intents=["refuse"])
        response = post(tenant_a, {"intent": "refuse"})
        assert response.status_code == 502
        body = response.json()
        assert body["success"] is False
        assert body["status"] == "failed"
        assert body["error"]["code"] == "AGENT_EXECUTION_FAILED"
        assert body["error"]["message"] == "the model refused"
        run = AgentRun.objects.get(pk=body["runId"])
        assert run.status == RunStatus.FAILED
        assert run.error_code == "AGENT_EXECUTION_FAILED"
        assert run.error_message == "the model refused"
        assert run.metrics["error"]["code"] == "AGENT_EXECUTION_FAILED"
        assert run.metrics["responseOk"] is False
        assert CALLS[body["runId"]] == 1  # permanent errors are not retried
        assert AgentRunMetric.objects.filter(run=run, name="error").exists()

    def test_retryable_failure_is_retried_and_attempts_recorded(self, tenant_a, make_agent):
        make_agent("Flaky", "test-flaky", intents=["wobble"])
        response = post(tenant_a, {"intent": "wobble"})
        assert response.status_code == 200, response.json()
        run = AgentRun.objects.get(pk=response.json()["runId"])
        assert CALLS[str(run.pk)] == 2
        assert run.metrics["attempts"] == 2
        assert run.metrics["retries"] == 1
        assert AgentRunMetric.objects.get(run=run, name="attempts").value == 2
        assert {"policy": "retry", "retried": 1}.items() <= run.meta["policies"][0].items()
        # The retried tool call kept its call id: one row with the last outcome.
        execution = ToolExecution.objects.get(run=run)
        assert execution.status == "success"

    def test_timeout_answers_504_and_the_handler_sees_cancelled(self, tenant_a, make_agent):
        make_agent(
            "Stuck",
            "test-wait-cancel",
            intents=["hang"],
            config={"timeout_s": 0.3, "retry": {"max_attempts": 1}},
        )
        response = post(tenant_a, {"intent": "hang", "payload": {"max_s": 5}})
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "AGENT_TIMEOUT"
        run = AgentRun.objects.get(pk=response.json()["runId"])
        assert run.status == RunStatus.FAILED
        assert run.error_code == "AGENT_TIMEOUT"
        assert run.duration_ms < 3000


class TestResolution:
    def test_known_intent_without_agent_resolves(self, tenant_a, make_agent):
        make_agent("Sleeper", "test-sleep", intents=["nap"])
        assert post(tenant_a, {"intent": "nap"}).json()["agent"] == "Sleeper"

    def test_agent_by_slug_or_name(self, tenant_a, make_agent):
        make_agent("Sleeper", "test-sleep", intents=["nap"])
        assert post(tenant_a, {"intent": "nap", "agent": "sleeper"}).status_code == 200
        assert post(tenant_a, {"intent": "nap", "agent": "Sleeper"}).status_code == 200

    def test_known_intent_with_the_wrong_agent(self, tenant_a, make_agent):
        make_agent("Sleeper", "test-sleep", intents=["nap"])
        make_agent("Refuser", "test-fail", intents=["refuse"])
        response = post(tenant_a, {"intent": "nap", "agent": "Refuser"})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "INTENT_AGENT_MISMATCH"
        assert not AgentRun.objects.exists()

    def test_unknown_intent_without_agent(self, tenant_a, make_agent):
        make_agent("Sleeper", "test-sleep", intents=["nap"])
        response = post(tenant_a, {"intent": "dance"})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "AGENT_REQUIRED"

    def test_unknown_agent(self, tenant_a):
        response = post(tenant_a, {"intent": "nap", "agent": "Ghost"})
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "AGENT_NOT_REGISTERED"

    def test_agent_without_a_registered_handler(self, tenant_a, make_agent):
        make_agent("Hollow", "no-such-handler", intents=["echo"])
        make_agent("Empty", "", intents=["void"])
        for intent in ("echo", "void"):
            response = post(tenant_a, {"intent": intent})
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "AGENT_NOT_REGISTERED"
        assert not AgentRun.objects.exists()

    @pytest.mark.parametrize(
        "status", [AgentStatus.DRAFT, AgentStatus.PAUSED, AgentStatus.DISABLED]
    )
    def test_inactive_agent_is_disabled(self, tenant_a, make_agent, status):
        make_agent("Napper", "test-sleep", intents=["nap"], status=status)
        for body in ({"intent": "nap", "agent": "Napper"}, {"intent": "nap"}):
            response = post(tenant_a, body)
            assert response.status_code == 409
            assert response.json()["error"]["code"] == "AGENT_DISABLED"

    def test_another_organizations_agent_is_not_registered_for_me(
        self, tenant_a, tenant_b, make_agent
    ):
        make_agent("Secret", "test-sleep", intents=["nap"], tenant=tenant_b)
        assert post(tenant_a, {"intent": "nap", "agent": "Secret"}).status_code == 404
        assert post(tenant_a, {"intent": "nap"}).json()["error"]["code"] == "AGENT_REQUIRED"

    def test_body_identity_is_never_trusted(self, tenant_a, tenant_b, make_agent):
        make_agent("Sleeper", "test-sleep", intents=["nap"])
        response = post(
            tenant_a,
            {"intent": "nap", "context": {"organizationId": str(tenant_b.organization.pk)}},
        )
        run = AgentRun.objects.get(pk=response.json()["runId"])
        assert run.organization == tenant_a.organization


class TestValidationAndRoles:
    def test_invalid_body_names_the_fields(self, tenant_a):
        response = post(tenant_a, {"mode": "later", "context": "x"})
        assert response.status_code == 400
        body = response.json()
        assert body["error"]["code"] == "INVALID_REQUEST"
        assert {"intent", "mode", "context"} <= set(body["error"]["details"])
        assert body["status"] == "failed"

    def test_unknown_dataset_is_invalid(self, tenant_a, make_agent):
        make_agent("Sleeper", "test-sleep", intents=["nap"])
        response = post(tenant_a, {"intent": "nap", "datasetId": "nope"})
        assert response.status_code == 400
        assert "datasetId" in response.json()["error"]["details"]

    def test_viewer_may_not_run_agents(self, tenant_a, make_agent):
        from rest_framework.test import APIClient

        from tests.factories import MemberFactory

        make_agent("Sleeper", "test-sleep", intents=["nap"])
        viewer = MemberFactory(organization=tenant_a.organization, role=MemberRole.VIEWER)
        client = APIClient()
        client.force_login(viewer.user)
        response = client.post("/api/orchestrate", {"intent": "nap"}, format="json")
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "FORBIDDEN"

    def test_unauthenticated(self, anonymous_client):
        response = anonymous_client.post("/api/orchestrate", {"intent": "nap"}, format="json")
        assert response.status_code == 401


class TestRateLimit:
    def test_over_the_limit_answers_429_with_retry_after_and_no_run(self, tenant_a, make_agent):
        make_agent(
            "Sleeper",
            "test-sleep",
            intents=["nap"],
            config={"rate_limit": {"limit": 2, "window_s": 30}},
        )
        assert post(tenant_a, {"intent": "nap"}).status_code == 200
        assert post(tenant_a, {"intent": "nap"}).status_code == 200
        response = post(tenant_a, {"intent": "nap"})
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "RATE_LIMITED"
        assert 1 <= int(response["Retry-After"]) <= 30
        assert AgentRun.objects.count() == 2


class TestCircuit:
    def test_three_failures_open_the_circuit_and_the_handler_is_not_called(
        self, tenant_a, make_agent
    ):
        make_agent("Refuser", "test-fail", intents=["refuse"])
        for _ in range(3):
            assert post(tenant_a, {"intent": "refuse"}).status_code == 502
        response = post(tenant_a, {"intent": "refuse"})
        assert response.status_code == 502
        body = response.json()
        assert body["error"]["code"] == "CIRCUIT_OPEN"
        assert int(response["Retry-After"]) >= 1
        run = AgentRun.objects.get(pk=body["runId"])
        assert run.status == RunStatus.FAILED
        assert run.error_code == "CIRCUIT_OPEN"
        assert CALLS[str(run.pk)] == 0
