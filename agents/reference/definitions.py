"""The original system's definitions that never had a handler.

They are declared so every organization is seeded with the full catalog of ten
agents; with no handler key they are seeded DRAFT (requests answer AGENT_DISABLED) and,
if an admin activates one before it has a handler, AGENT_NOT_REGISTERED, until someone
writes their code or points them at a remote HTTP agent.
"""

from __future__ import annotations

from agents.choices import AgentKind
from agents.handlers.registry import AgentDefinition, registry

DRAFT_DEFINITIONS = (
    AgentDefinition(
        name="InsightAgent",
        kind=AgentKind.ANALYST,
        version="2.1.0",
        intents=("analyze-data", "metric-digest"),
        owner_team="ai-lab",
        description="Analyzes datasets and writes metric digests.",
    ),
    AgentDefinition(
        name="AdAgent",
        kind=AgentKind.COPILOT,
        version="1.7.0",
        intents=("generate-ad", "variant-pack"),
        owner_team="marketing",
        description="Writes ad copy and variant packs for paid campaigns.",
    ),
    AgentDefinition(
        name="DesignAgent",
        kind=AgentKind.COPILOT,
        version="1.3.0",
        intents=("design-brief", "image-variant"),
        owner_team="marketing",
        description="Turns campaign goals into design briefs and image variants.",
    ),
    AgentDefinition(
        name="CampaignAgent",
        kind=AgentKind.WORKFLOW,
        version="2.0.0",
        intents=("plan-campaign", "optimize-funnel"),
        owner_team="marketing",
        description="Plans multi-channel campaigns and optimizes their funnels.",
    ),
)

for definition in DRAFT_DEFINITIONS:
    registry.declare(definition)
