from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from agents.choices import AgentStatus
from agents.handlers import registry
from agents.models import Agent, AgentCapability, ApiKey, Dataset, Organization
from agents.services import agent_definitions_sync
from tests.factories import OrganizationFactory

REFERENCE = {
    "ContentAgent": ("COPILOT", "3.1.0", {"generate-draft", "summarize", "repurpose"}, "marketing"),
    "SEOAgent": ("ANALYST", "2.4.0", {"seo-audit", "keyword-research"}, "marketing"),
    "EmailAgent": (
        "WORKFLOW",
        "2.2.0",
        {"generate-sequence", "optimize-subject", "ab-test"},
        "marketing",
    ),
    "SupportAgent": ("COPILOT", "1.9.0", {"support", "triage", "macro-suggest"}, "support"),
    "SocialAgent": (
        "WORKFLOW",
        "3.0.0",
        {"generate-post", "optimize-caption", "hashtag-pack"},
        "marketing",
    ),
    "InsightAgent": ("ANALYST", "2.1.0", {"analyze-data", "metric-digest"}, "ai-lab"),
    "AdAgent": ("COPILOT", "1.7.0", {"generate-ad", "variant-pack"}, "marketing"),
    "BrandVoiceAgent": (
        "COPILOT",
        "1.5.0",
        {"brand-voice", "tone-analysis", "knowledge-search"},
        "marketing",
    ),
    "DesignAgent": ("COPILOT", "1.3.0", {"design-brief", "image-variant"}, "marketing"),
    "CampaignAgent": ("WORKFLOW", "2.0.0", {"plan-campaign", "optimize-funnel"}, "marketing"),
}
WITH_HANDLER = {
    "ContentAgent",
    "SEOAgent",
    "EmailAgent",
    "SupportAgent",
    "SocialAgent",
    "BrandVoiceAgent",
}


@pytest.mark.django_db
class TestDefinitionsSync:
    def test_seeds_the_ten_reference_definitions(self):
        organization = OrganizationFactory()
        result = agent_definitions_sync(organization=organization)
        assert set(result.created) >= set(REFERENCE)
        for name, (kind, version, intents, team) in REFERENCE.items():
            agent = Agent.objects.get(organization=organization, name=name)
            assert (agent.kind, agent.version, agent.owner_team) == (kind, version, team)
            assert set(agent.capabilities.values_list("name", flat=True)) == intents
            if name in WITH_HANDLER:
                assert registry.is_registered(agent.handler)
                assert agent.status == AgentStatus.ACTIVE
            else:
                assert agent.handler == ""
                assert agent.status == AgentStatus.DRAFT

    def test_second_sync_creates_nothing_and_keeps_admin_changes(self):
        organization = OrganizationFactory()
        agent_definitions_sync(organization=organization)
        content = Agent.objects.get(organization=organization, name="ContentAgent")
        content.status = AgentStatus.PAUSED
        content.config = {"timeout_s": 5}
        content.save()
        content.capabilities.filter(name="repurpose").delete()
        before = (Agent.objects.count(), AgentCapability.objects.count())

        result = agent_definitions_sync(organization=organization)

        assert result.created == []
        assert (Agent.objects.count(), AgentCapability.objects.count()) == before
        content.refresh_from_db()
        assert content.status == AgentStatus.PAUSED
        assert content.config == {"timeout_s": 5}
        assert not content.capabilities.filter(name="repurpose").exists()


@pytest.mark.django_db
def test_seed_demo_is_idempotent_and_prints_secrets_once():
    out = StringIO()
    call_command("seed_demo", stdout=out)
    first = out.getvalue()
    organization = Organization.objects.get(slug="demo")
    key = ApiKey.objects.get(organization=organization)
    assert "password:" in first
    assert Dataset.objects.filter(organization=organization, slug="brand-handbook").exists()
    counts = (Agent.objects.count(), AgentCapability.objects.count(), ApiKey.objects.count())

    again = StringIO()
    call_command("seed_demo", stdout=again)
    assert (
        Agent.objects.count(),
        AgentCapability.objects.count(),
        ApiKey.objects.count(),
    ) == counts
    assert "already" in again.getvalue()
    assert key.prefix not in again.getvalue()
