"""The seeded reference agents answer through POST /api/orchestrate like any client sees them."""

from __future__ import annotations

import pytest

from agents.services import agent_definitions_sync
from runs.models import AgentRun, AgentRunMetric, ToolExecution
from tests.factories import DatasetFactory

pytestmark = pytest.mark.django_db

TEXT = (
    "The control plane records every run. Each run has metrics, tool executions and steps. "
    "Operators watch runs in the admin. Programs call the API with keys. "
    "Nothing a handler does is lost."
)


@pytest.fixture
def seeded(tenant_a):
    agent_definitions_sync(organization=tenant_a.organization)
    return tenant_a


def test_summarize_resolves_content_agent_and_records_tools_and_metrics(seeded):
    response = seeded.client.post(
        "/api/orchestrate",
        {"intent": "summarize", "payload": {"text": TEXT, "max_sentences": 2}},
        format="json",
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["agent"] == "ContentAgent"
    run = AgentRun.objects.get(pk=body["runId"])
    assert ToolExecution.objects.filter(run=run, tool__slug="text-summarizer").exists()
    assert AgentRunMetric.objects.filter(run=run, name="tokens_in").exists()
    summary = body["data"]["summary"]
    assert isinstance(summary, str) and summary
    assert all(sentence.strip() in TEXT for sentence in summary.split(". ") if sentence.strip())


def test_knowledge_search_uses_the_dataset_and_reports_vector_recalls(seeded):
    dataset = DatasetFactory(
        organization=seeded.organization,
        slug="handbook",
        metadata={
            "documents": [
                {"id": "refunds", "title": "Refunds", "text": "Refunds within 30 days."},
                {"id": "ship", "title": "Shipping", "text": "Orders ship in two business days."},
            ]
        },
    )
    response = seeded.client.post(
        "/api/orchestrate",
        {
            "intent": "knowledge-search",
            "datasetId": "handbook",
            "payload": {"query": "how do refunds work", "top_k": 1},
        },
        format="json",
    )
    assert response.status_code == 200, response.json()
    run = AgentRun.objects.get(pk=response.json()["runId"])
    assert run.dataset == dataset
    assert AgentRunMetric.objects.get(run=run, name="vector_recalls").value >= 1
    assert "refunds" in str(response.json()["data"])


def test_draft_definitions_answer_agent_disabled(seeded):
    response = seeded.client.post(
        "/api/orchestrate", {"intent": "generate-ad", "payload": {}}, format="json"
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "AGENT_DISABLED"


def test_bad_payload_fails_the_run_with_a_clear_message(seeded):
    response = seeded.client.post(
        "/api/orchestrate", {"intent": "summarize", "payload": {"text": 42}}, format="json"
    )
    assert response.status_code == 502
    body = response.json()
    assert body["error"]["code"] == "AGENT_EXECUTION_FAILED"
    assert "text" in body["error"]["message"]
    assert AgentRun.objects.get(pk=body["runId"]).status == "FAILED"
