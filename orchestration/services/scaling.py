"""Scaling evaluation, the way the Kubernetes Horizontal Pod Autoscaler decides.

For every metric that has a target, ratio = observed / target (the request rate is
compared per replica). The recommendation is ceil(current x max(ratio)), unless the
largest ratio is within the tolerance of 1, when the fleet stays as it is. A scale-down
is stabilised: the fleet never shrinks below the highest recommendation made in the last
``scale_down_stabilization_s`` seconds, so one quiet minute does not remove a node that
the next busy one needs. The result is clamped to [min_replicas, max_replicas].

Every evaluation is recorded as a scaling.evaluated event; those events are also the
history the stabilisation window reads back.

Units: utilizations are fractions (0.75 = 75 %); the request rate is requests per second
over the whole fleet, and ``target_requests_per_replica`` is per second per replica.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.utils import timezone

from orchestration import bus
from orchestration.choices import EventType
from orchestration.models import OrchestratorEvent
from orchestration.services.config import config_current
from orchestration.services.fleet_metrics import duration_percentiles
from orchestration.services.routing import nodes_routable
from runs.choices import RunStatus
from runs.models import AgentRun

ACTION_UP = "scale-up"
ACTION_DOWN = "scale-down"
ACTION_MAINTAIN = "maintain"

REQUEST_RATE_WINDOW = timedelta(minutes=1)
P95_WINDOW = timedelta(minutes=5)
# The stabilisation window is read from the newest scaling events, at most this many:
# one bounded scan of event_type_id_idx, whatever the size of the event table.
HISTORY_LIMIT = 200

METRIC_LABELS = {
    "cpuUtilization": "CPU utilization",
    "memoryUtilization": "memory utilization",
    "requestRate": "request rate per replica",
}


class InvalidScalingInput(ValueError):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


def utilization_fraction(value: float | None, *, field_name: str) -> float | None:
    """0..1 is a fraction; above 1 and up to 100 it is a percentage (75 means 75 %)."""
    if value is None:
        return None
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise InvalidScalingInput(field_name, "must be a number between 0 and 1 (or 0..100 %)")
    if number <= 1.0:
        return number
    if number <= 100.0:
        return number / 100.0
    raise InvalidScalingInput(field_name, "must be a number between 0 and 1 (or 0..100 %)")


def request_rate_value(value: float | None) -> float | None:
    if value is None:
        return None
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise InvalidScalingInput("requestRate", "must be a non-negative number (requests/s)")
    return number


@dataclass(frozen=True)
class ScalingTargets:
    cpu: float
    memory: float
    requests_per_replica: float
    tolerance: float
    min_replicas: int
    max_replicas: int
    scale_down_stabilization_s: float

    @classmethod
    def from_document(cls, document: dict) -> ScalingTargets:
        scaling = document["scaling"]
        return cls(
            cpu=float(scaling["target_cpu_utilization"]),
            memory=float(scaling["target_memory_utilization"]),
            requests_per_replica=float(scaling["target_requests_per_replica"]),
            tolerance=float(scaling["tolerance"]),
            min_replicas=int(scaling["min_replicas"]),
            max_replicas=int(scaling["max_replicas"]),
            scale_down_stabilization_s=float(scaling["scale_down_stabilization_s"]),
        )


@dataclass(frozen=True)
class Recommendation:
    action: str
    current: int
    target: int
    recommended: int  # before stabilisation and clamping: what the history remembers
    ratios: dict[str, float]
    reason: str
    stabilized: bool = False
    clamped: bool = False
    notes: list[str] = field(default_factory=list)


def replicas_recommend(
    *,
    current: int,
    cpu: float | None,
    memory: float | None,
    request_rate: float | None,
    targets: ScalingTargets,
    history: tuple[int, ...] | list[int] = (),  # made within the stabilisation window
) -> Recommendation:
    """The HPA arithmetic, free of I/O so every case can be tabulated in a test."""
    current = max(1, int(current))
    ratios: dict[str, float] = {}
    if cpu is not None and targets.cpu > 0:
        ratios["cpuUtilization"] = cpu / targets.cpu
    if memory is not None and targets.memory > 0:
        ratios["memoryUtilization"] = memory / targets.memory
    if request_rate is not None and targets.requests_per_replica > 0:
        ratios["requestRate"] = request_rate / (targets.requests_per_replica * current)

    if not ratios:
        recommended = current
        reason = "no metric with a target was observed"
    else:
        driver = max(ratios, key=lambda name: (ratios[name], name))
        ratio = ratios[driver]
        label = f"{METRIC_LABELS[driver]} at {ratio:.2f}x its target"
        # Rounded: 0.77 / 0.7 is 1.1000000000000003, and the band's edge is inside it.
        if round(abs(ratio - 1.0), 9) <= targets.tolerance:
            recommended = current
            reason = f"{label}, within the {targets.tolerance:.0%} tolerance"
        else:
            # round() first, so float noise cannot push an exact product past an integer:
            # 2 x (1.05 / 0.7) is 3.0000000000000004 in floats, and must give 3, not 4.
            recommended = math.ceil(round(current * ratio, 9))
            reason = f"{label}: ceil({current} x {ratio:.2f}) = {recommended}"

    stabilized_to = recommended
    stabilized = False
    if recommended < current:
        # Never below the highest recommendation of the window, never above today's fleet.
        ceiling = max([recommended, *history])
        stabilized_to = min(current, ceiling)
        stabilized = stabilized_to != recommended
    target = max(targets.min_replicas, min(targets.max_replicas, stabilized_to))
    clamped = target != stabilized_to

    notes = []
    if stabilized:
        notes.append(
            f"scale-down stabilised at {stabilized_to}: the highest recommendation of the"
            f" last {targets.scale_down_stabilization_s:g} s"
        )
    if clamped:
        notes.append(f"clamped to [{targets.min_replicas}, {targets.max_replicas}] replicas")
    if target > current:
        action = ACTION_UP
    elif target < current:
        action = ACTION_DOWN
    else:
        action = ACTION_MAINTAIN
    summary = "; ".join([reason, *notes])
    verb = {ACTION_UP: "scale up", ACTION_DOWN: "scale down", ACTION_MAINTAIN: "maintain"}[action]
    return Recommendation(
        action=action,
        current=current,
        target=target,
        recommended=recommended,
        ratios=ratios,
        reason=f"{summary}; {verb}: {current} -> {target} replicas",
        stabilized=stabilized,
        clamped=clamped,
        notes=notes,
    )


def _live_utilization(values: list[float]) -> float | None:
    """Mean of node-reported figures; a node that reports a percentage is read as one."""
    fractions = [v / 100.0 if v > 1.0 else v for v in values if v is not None and v >= 0]
    return sum(fractions) / len(fractions) if fractions else None


def recommendations_within(*, since: datetime, until: datetime) -> list[int]:
    """Recommendations recorded in [since, until], from the newest scaling events.

    Reads the newest HISTORY_LIMIT rows by id and filters on the evaluation time kept in
    the payload (the clock the evaluation used), so the read stays bounded.
    """
    recent = (
        OrchestratorEvent.objects.filter(type=EventType.SCALING_EVALUATED)
        .order_by("-id")
        .values_list("payload", flat=True)[:HISTORY_LIMIT]
    )
    found = []
    for payload in recent:
        try:
            evaluated_at = datetime.fromisoformat(payload["evaluatedAt"])
            recommended = int(payload["recommendedReplicas"])
        except (KeyError, TypeError, ValueError):
            continue
        if since <= evaluated_at <= until:
            found.append(recommended)
    return found


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def scaling_evaluate(
    *,
    cpu: float | None = None,
    memory: float | None = None,
    request_rate: float | None = None,
    now: datetime | None = None,
    actor: str = "",
) -> dict:
    """Evaluate, record a scaling.evaluated event, and return the decision document.

    Figures given are used as they are (utilizations as fractions, or percentages
    above 1); omitted ones are measured. Raises InvalidScalingInput for bad figures.
    """
    now = now or timezone.now()
    cpu = utilization_fraction(cpu, field_name="cpuUtilization")
    memory = utilization_fraction(memory, field_name="memoryUtilization")
    request_rate = request_rate_value(request_rate)
    document = config_current()
    targets = ScalingTargets.from_document(document)
    sources = {
        "cpuUtilization": "given" if cpu is not None else "live",
        "memoryUtilization": "given" if memory is not None else "live",
        "requestRate": "given" if request_rate is not None else "live",
    }

    nodes = list(
        nodes_routable(now=now, document=document).values_list(
            "cpu_utilization", "memory_utilization"
        )
    )
    current = max(1, len(nodes))
    if cpu is None:
        cpu = _live_utilization([c for c, _ in nodes])
    if memory is None:
        memory = _live_utilization([m for _, m in nodes])
    for name, value in (("cpuUtilization", cpu), ("memoryUtilization", memory)):
        if value is None:
            sources[name] = "none"  # no fresh node reports it: the metric is left out
    if request_rate is None:
        created = AgentRun.objects.filter(
            created_at__gte=now - REQUEST_RATE_WINDOW, created_at__lte=now
        ).count()
        request_rate = created / REQUEST_RATE_WINDOW.total_seconds()
    backlog = AgentRun.objects.filter(status=RunStatus.PENDING).count()
    (p95,) = duration_percentiles(
        AgentRun.objects.filter(created_at__gte=now - P95_WINDOW, created_at__lte=now), (0.95,)
    )

    history = recommendations_within(
        since=now - timedelta(seconds=targets.scale_down_stabilization_s), until=now
    )
    recommendation = replicas_recommend(
        current=current,
        cpu=cpu,
        memory=memory,
        request_rate=request_rate,
        targets=targets,
        history=history,
    )
    decision = {
        "action": recommendation.action,
        "currentReplicas": recommendation.current,
        "targetReplicas": recommendation.target,
        "reason": recommendation.reason,
        "recommendedReplicas": recommendation.recommended,
        "stabilized": recommendation.stabilized,
        "clamped": recommendation.clamped,
        "cpuUtilization": _round(cpu),
        "memoryUtilization": _round(memory),
        "requestRate": _round(request_rate),
        "requestRateUnit": "requests/s",
        "pendingBacklog": backlog,
        "p95DurationMs": None if p95 is None else round(p95, 1),
        "ratios": {name: round(value, 4) for name, value in recommendation.ratios.items()},
        "sources": sources,
        "targets": {
            "cpuUtilization": targets.cpu,
            "memoryUtilization": targets.memory,
            "requestsPerReplica": targets.requests_per_replica,
            "tolerance": targets.tolerance,
            "minReplicas": targets.min_replicas,
            "maxReplicas": targets.max_replicas,
            "scaleDownStabilizationS": targets.scale_down_stabilization_s,
        },
        "evaluatedAt": now.isoformat(),
    }
    bus.publish(EventType.SCALING_EVALUATED, {**decision, "actor": actor})
    return decision
