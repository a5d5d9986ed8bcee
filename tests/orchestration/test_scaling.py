"""Scaling evaluation: the HPA formula, tolerance, min/max, stabilisation, the API."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from orchestration.choices import EventType, NodeStatus
from orchestration.models import OrchestratorEvent, OrchestratorNode
from orchestration.services.scaling import (
    InvalidScalingInput,
    ScalingTargets,
    replicas_recommend,
    scaling_evaluate,
    utilization_fraction,
)
from runs.choices import RunStatus
from runs.models import AgentRun
from tests.factories import AgentFactory, RunFactory, UserFactory

pytestmark = pytest.mark.django_db

TARGETS = ScalingTargets(
    cpu=0.7,
    memory=0.8,
    requests_per_replica=50.0,
    tolerance=0.1,
    min_replicas=1,
    max_replicas=10,
    scale_down_stabilization_s=300,
)
MIN_TWO = ScalingTargets(**{**TARGETS.__dict__, "min_replicas": 2})

# (case, current, cpu, memory, request rate, history, targets, action, target replicas)
CASES = [
    ("on target", 3, 0.7, None, None, [], TARGETS, "maintain", 3),
    ("inside tolerance above", 3, 0.75, None, None, [], TARGETS, "maintain", 3),
    ("inside tolerance below", 3, 0.65, None, None, [], TARGETS, "maintain", 3),
    ("tolerance edge is inside", 3, 0.77, None, None, [], TARGETS, "maintain", 3),
    ("cpu 1.2x", 3, 0.84, None, None, [], TARGETS, "scale-up", 4),  # ceil(3.6)
    ("float noise: 2 x 1.5 is 3", 2, 1.05, None, None, [], TARGETS, "scale-up", 3),
    ("memory drives", 2, 0.5, 1.2, None, [], TARGETS, "scale-up", 3),
    ("the largest ratio wins", 2, 1.4, 0.8, None, [], TARGETS, "scale-up", 4),
    ("request rate per replica", 2, None, None, 300.0, [], TARGETS, "scale-up", 6),
    ("request rate low", 4, None, None, 20.0, [], TARGETS, "scale-down", 1),
    ("scale down", 4, 0.35, None, None, [], TARGETS, "scale-down", 2),
    ("clamped to max", 8, 1.4, None, None, [], TARGETS, "scale-up", 10),
    ("clamped to min", 2, 0.07, None, None, [], MIN_TWO, "maintain", 2),
    ("above max shrinks to max", 12, 0.7, None, None, [], TARGETS, "scale-down", 10),
    ("idle fleet goes to min", 3, 0.0, 0.0, 0.0, [], TARGETS, "scale-down", 1),
    ("stabilised by a recent 3", 4, 0.35, None, None, [3, 2], TARGETS, "scale-down", 3),
    ("stabilised at current", 4, 0.35, None, None, [6], TARGETS, "maintain", 4),
    ("scale up ignores history", 2, 1.05, None, None, [1], TARGETS, "scale-up", 3),
    ("no metric", 3, None, None, None, [], TARGETS, "maintain", 3),
]


@pytest.mark.parametrize(
    ("case", "current", "cpu", "memory", "rate", "history", "targets", "action", "target"),
    CASES,
    ids=[case[0] for case in CASES],
)
def test_hpa_formula(case, current, cpu, memory, rate, history, targets, action, target):
    result = replicas_recommend(
        current=current,
        cpu=cpu,
        memory=memory,
        request_rate=rate,
        targets=targets,
        history=history,
    )
    assert (result.action, result.target) == (action, target), result.reason
    assert result.current == current
    assert f"{current} -> {target} replicas" in result.reason


def test_stabilised_and_clamped_decisions_say_why():
    stabilised = replicas_recommend(
        current=4, cpu=0.35, memory=None, request_rate=None, targets=TARGETS, history=[3]
    )
    assert stabilised.recommended == 2
    assert stabilised.stabilized is True
    assert "stabilised" in stabilised.reason
    clamped = replicas_recommend(
        current=8, cpu=1.4, memory=None, request_rate=None, targets=TARGETS
    )
    assert clamped.recommended == 16
    assert clamped.clamped is True
    assert "clamped to [1, 10]" in clamped.reason


@pytest.mark.parametrize(
    ("value", "fraction"), [(0, 0.0), (0.5, 0.5), (1, 1.0), (75, 0.75), (100, 1.0)]
)
def test_utilization_fractions_and_percentages(value, fraction):
    assert utilization_fraction(value, field_name="cpu") == pytest.approx(fraction)


@pytest.mark.parametrize("value", [-0.1, 100.5, float("nan"), float("inf")])
def test_utilization_out_of_range(value):
    with pytest.raises(InvalidScalingInput):
        utilization_fraction(value, field_name="cpu")


# --- the service, against the database -------------------------------------------------------


def fresh_nodes(count, *, now, cpu=0.5, memory=0.5):
    for i in range(count):
        OrchestratorNode.objects.update_or_create(
            node_id=f"n{i}",
            defaults={
                "status": NodeStatus.ACTIVE,
                "last_heartbeat_at": now,
                "cpu_utilization": cpu,
                "memory_utilization": memory,
                "capacity": 4,
            },
        )


def test_decision_is_recorded_as_an_event():
    now = timezone.now()
    fresh_nodes(2, now=now)
    # 0.95 / 0.7 = 1.36 is the largest ratio: ceil(2 x 1.36) = 3.
    decision = scaling_evaluate(cpu=0.95, memory=0.4, request_rate=10.0, now=now, actor="node")
    assert decision["action"] == "scale-up"
    assert decision["currentReplicas"] == 2
    assert decision["targetReplicas"] == 3
    assert decision["sources"] == {
        "cpuUtilization": "given",
        "memoryUtilization": "given",
        "requestRate": "given",
    }
    event = OrchestratorEvent.objects.get(type=EventType.SCALING_EVALUATED)
    assert event.payload["targetReplicas"] == 3
    assert event.payload["recommendedReplicas"] == 3
    assert event.payload["actor"] == "node"
    assert event.payload["evaluatedAt"] == now.isoformat()


def test_live_figures_when_omitted():
    heartbeat = timezone.now()
    OrchestratorNode.objects.create(
        node_id="a", last_heartbeat_at=heartbeat, cpu_utilization=0.9, memory_utilization=0.2
    )
    OrchestratorNode.objects.create(
        node_id="b", last_heartbeat_at=heartbeat, cpu_utilization=0.7, memory_utilization=0.4
    )
    # Neither counts: one is draining, the other stopped heartbeating.
    OrchestratorNode.objects.create(
        node_id="c", status=NodeStatus.DRAINING, last_heartbeat_at=heartbeat, cpu_utilization=0
    )
    OrchestratorNode.objects.create(
        node_id="d", last_heartbeat_at=heartbeat - timedelta(minutes=5), cpu_utilization=0.0
    )
    agent = AgentFactory()
    for duration in (100, 200, 300, 400):
        RunFactory(agent=agent, status=RunStatus.SUCCESS, duration_ms=duration)
    RunFactory.create_batch(2, agent=agent, status=RunStatus.PENDING)
    old = RunFactory(agent=agent, status=RunStatus.SUCCESS, duration_ms=99_999)
    now = timezone.now()  # after the runs were created: they are inside the window
    AgentRun.objects.filter(pk=old.pk).update(created_at=now - timedelta(hours=2))

    decision = scaling_evaluate(now=now)
    assert decision["currentReplicas"] == 2
    assert decision["cpuUtilization"] == pytest.approx(0.8)
    assert decision["memoryUtilization"] == pytest.approx(0.3)
    assert decision["requestRate"] == pytest.approx(6 / 60, abs=1e-4)  # runs/s, last minute
    assert decision["requestRateUnit"] == "requests/s"
    assert decision["pendingBacklog"] == 2
    assert decision["p95DurationMs"] == pytest.approx(385.0)  # percentile_cont(0.95)
    assert set(decision["sources"].values()) == {"live"}
    # cpu 0.8 / 0.7 = 1.14 is outside the tolerance: ceil(2 x 1.14) = 3.
    assert (decision["action"], decision["targetReplicas"]) == ("scale-up", 3)


def test_without_nodes_there_is_one_replica_and_no_utilization():
    decision = scaling_evaluate(request_rate=0.0)
    assert decision["currentReplicas"] == 1
    assert decision["cpuUtilization"] is None
    assert decision["sources"]["cpuUtilization"] == "none"
    assert decision["action"] == "maintain"  # already at min_replicas


def test_scale_down_waits_for_the_stabilisation_window():
    t0 = timezone.now() - timedelta(minutes=30)
    fresh_nodes(4, now=t0)
    first = scaling_evaluate(cpu=0.7, request_rate=0.0, memory=0.0, now=t0)
    assert (first["action"], first["targetReplicas"]) == ("maintain", 4)

    t1 = t0 + timedelta(seconds=60)
    fresh_nodes(4, now=t1)
    held = scaling_evaluate(cpu=0.35, memory=0.0, request_rate=0.0, now=t1)
    assert held["recommendedReplicas"] == 2
    assert (held["action"], held["targetReplicas"]) == ("maintain", 4)
    assert held["stabilized"] is True

    # 301 s after the last "4": only recommendations of 2 remain in the window.
    t2 = t0 + timedelta(seconds=301)
    fresh_nodes(4, now=t2)
    released = scaling_evaluate(cpu=0.35, memory=0.0, request_rate=0.0, now=t2)
    assert (released["action"], released["targetReplicas"]) == ("scale-down", 2)
    assert OrchestratorEvent.objects.filter(type=EventType.SCALING_EVALUATED).count() == 3


# --- API ---------------------------------------------------------------------------------


@pytest.fixture
def node_client(settings):
    settings.ORCHESTRATOR_NODE_TOKEN = "node_test-secret"
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer node_test-secret")
    return client


def test_evaluate_api_shape(node_client):
    response = node_client.post(
        "/api/orchestration/scaling/evaluate",
        {"cpuUtilization": 0.84, "memoryUtilization": 0.5, "requestRate": 10},
        format="json",
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["success"] is True
    assert body["timestamp"]
    decision = body["decision"]
    assert decision["action"] in {"scale-up", "scale-down", "maintain"}
    assert {"currentReplicas", "targetReplicas", "reason"} <= decision.keys()
    assert decision["cpuUtilization"] == 0.84
    assert OrchestratorEvent.objects.filter(type=EventType.SCALING_EVALUATED).count() == 1


def test_evaluate_accepts_percentages(node_client):
    body = node_client.post(
        "/api/orchestration/scaling/evaluate", {"cpuUtilization": 85}, format="json"
    ).json()
    assert body["decision"]["cpuUtilization"] == 0.85


@pytest.mark.parametrize(
    "payload",
    [
        {"cpuUtilization": -0.1},
        {"memoryUtilization": 101},
        {"requestRate": -1},
        {"cpuUtilization": "x"},
    ],
)
def test_evaluate_rejects_bad_figures(node_client, payload):
    response = node_client.post("/api/orchestration/scaling/evaluate", payload, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_REQUEST"
    assert set(response.json()["error"]["details"]) == set(payload)
    assert not OrchestratorEvent.objects.filter(type=EventType.SCALING_EVALUATED).exists()


def test_organization_key_may_not_evaluate(tenant_a, anonymous_client):
    response = tenant_a.client.post(
        "/api/orchestration/scaling/evaluate", {"cpuUtilization": 0.5}, format="json"
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "FORBIDDEN"
    assert anonymous_client.post("/api/orchestration/scaling/evaluate", {}).status_code == 401
    assert not OrchestratorEvent.objects.filter(type=EventType.SCALING_EVALUATED).exists()


def test_staff_may_evaluate():
    client = APIClient()
    client.force_login(UserFactory(is_staff=True))
    response = client.post("/api/orchestration/scaling/evaluate", {}, format="json")
    assert response.status_code == 200, response.json()
    event = OrchestratorEvent.objects.get(type=EventType.SCALING_EVALUATED)
    assert event.payload["actor"].startswith("staff:")
