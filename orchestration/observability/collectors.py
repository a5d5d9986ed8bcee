"""Gauges computed when /metrics is scraped, from the database and the policy store.

They describe the fleet, not a process, so they are registered only on the registry that
serves the scrape: under several processes each would otherwise report the same figure
and Prometheus would see duplicates. Every query is small and indexed; a failing source
drops its gauges from this scrape (and logs why) instead of failing the scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from django.conf import settings
from django.db.models import Count
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agents.choices import AgentStatus
from agents.models import Agent
from orchestration.choices import NodeStatus
from orchestration.models import OrchestratorNode
from orchestration.observability.metrics import agent_label
from orchestration.policies import CircuitState, policy_store
from runs.choices import RunStatus
from runs.models import AgentRun

logger = logging.getLogger(__name__)

# acp_circuit_state values. A forced state reads as what it does to calls.
CIRCUIT_STATE_VALUES = {
    CircuitState.CLOSED: 0,
    CircuitState.FORCED_CLOSED: 0,
    CircuitState.HALF_OPEN: 1,
    CircuitState.OPEN: 2,
    CircuitState.FORCED_OPEN: 2,
}


def _circuit_state() -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "acp_circuit_state",
        "Circuit breaker state per ACTIVE agent: 0 closed, 1 half-open, 2 open.",
        labels=["agent"],
    )
    # Bounded: one policy-store round trip per agent, so at most METRICS_CIRCUIT_AGENTS_MAX.
    agents = (
        Agent.objects.filter(status=AgentStatus.ACTIVE)
        .select_related("organization")
        .only("id", "slug", "organization__slug")
        .order_by("id")[: settings.METRICS_CIRCUIT_AGENTS_MAX]
    )
    store = policy_store()
    for agent in agents:
        state = store.circuit_snapshot(agent_key=str(agent.pk)).state
        value = CIRCUIT_STATE_VALUES.get(state)
        if value is None:  # the shared store cannot be reached: no figure beats a wrong one
            continue
        label = agent_label(organization_slug=agent.organization.slug, agent_slug=agent.slug)
        family.add_metric([label], value)
    return family


def _nodes() -> GaugeMetricFamily:
    family = GaugeMetricFamily("acp_nodes", "Orchestrator nodes by status.", labels=["status"])
    # orchestrator_nodes holds one row per node: a GROUP BY over it is cheap.
    counts = dict(OrchestratorNode.objects.order_by().values_list("status").annotate(n=Count("id")))
    for status in NodeStatus.values:  # every status, so a series drops to 0 instead of vanishing
        family.add_metric([status], counts.get(status, 0))
    return family


def _pending_runs() -> GaugeMetricFamily:
    # The partial index run_active_status_idx holds only PENDING and RUNNING rows.
    pending = AgentRun.objects.filter(status=RunStatus.PENDING).count()
    return GaugeMetricFamily(
        "acp_pending_runs", "Runs waiting to be claimed (PENDING backlog).", value=pending
    )


class FleetCollector(Collector):
    """acp_circuit_state, acp_nodes and acp_pending_runs, read at scrape time."""

    sources = (_circuit_state, _nodes, _pending_runs)

    def describe(self) -> list[Metric]:
        # Names only: registering must not query the database (the default registry
        # would otherwise call collect() on registration).
        return [
            GaugeMetricFamily("acp_circuit_state", "", labels=["agent"]),
            GaugeMetricFamily("acp_nodes", "", labels=["status"]),
            GaugeMetricFamily("acp_pending_runs", ""),
        ]

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            try:
                yield source()
            except Exception as exc:
                logger.warning("metrics source %s failed: %s", source.__name__, exc)
