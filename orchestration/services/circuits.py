"""Circuit state for operators: read every agent's circuit, force one open or closed."""

from __future__ import annotations

from dataclasses import dataclass

from agents.models import Agent
from orchestration import bus
from orchestration.choices import EventType
from orchestration.policies import CircuitSnapshot, CircuitState, policy_store
from orchestration.services.config import agent_policy_live
from orchestration.services.resolution import agent_effective_config


@dataclass(frozen=True)
class AgentCircuit:
    agent: Agent
    snapshot: CircuitSnapshot
    wait_in_open_s: float


def circuit_list(*, agents) -> list[AgentCircuit]:
    store = policy_store()
    result = []
    for agent in agents:
        policy = agent_policy_live(agent_effective_config(agent))
        result.append(
            AgentCircuit(
                agent=agent,
                snapshot=store.circuit_snapshot(agent_key=str(agent.pk)),
                wait_in_open_s=policy.circuit.wait_in_open_s,
            )
        )
    return result


def circuit_force(*, agent: Agent, state: str | None, actor: str = "") -> CircuitSnapshot:
    """Force OPEN or CLOSED (an operator's override) or release it (None)."""
    if state not in (CircuitState.OPEN, CircuitState.CLOSED, None):
        raise ValueError(f"a circuit can be forced OPEN or CLOSED, not {state!r}")
    store = policy_store()
    store.circuit_force(agent_key=str(agent.pk), state=state)
    event = EventType.CIRCUIT_OPENED if state == CircuitState.OPEN else EventType.CIRCUIT_CLOSED
    bus.publish(
        event,
        {"agent": agent.name, "forced": state, "released": state is None, "actor": actor},
        organization=agent.organization,
        agent=agent,
    )
    return store.circuit_snapshot(agent_key=str(agent.pk))
