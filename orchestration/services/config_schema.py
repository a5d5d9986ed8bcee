"""What a valid live configuration document is: one serializer per section.

The whole document is required (every section, every field), and keys nobody reads are
refused: a misspelt setting must fail loudly instead of silently doing nothing. Values
are JSON numbers, never strings or booleans, so the stored document is what a reader
gets back. Errors have DRF's nested shape: {"section": {"field": ["message"]}}.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from rest_framework import serializers

# The strategies routing.route_select implements. A value routing does not implement
# would be accepted and then ignored, which is exactly what validation is for.
ROUTING_STRATEGIES = ("region-affinity",)

# Every process re-reads the document at most once per heartbeat interval (it caches it
# that long), so the interval also bounds how long a change takes to reach every
# process; an enormous one would make the fleet deaf to configuration until restarted.
MAX_HEARTBEAT_INTERVAL_S = 300


def _above(limit: float):
    def check(value) -> None:
        if value <= limit:
            raise serializers.ValidationError(f"Ensure this value is greater than {limit}.")

    return check


class Integer(serializers.IntegerField):
    """A JSON integer: no strings, no booleans, no fractions (5.0 is accepted as 5)."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        if isinstance(data, float) and not data.is_integer():
            self.fail("invalid")
        return super().to_internal_value(int(data))


class Number(serializers.FloatField):
    """A JSON number: no strings, no booleans; an integer stays an integer."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        value = super().to_internal_value(data)
        if not math.isfinite(value):  # json.loads accepts NaN and Infinity
            self.fail("invalid")
        return data if isinstance(data, int) else value


class StrictSerializer(serializers.Serializer):
    """Refuses keys it does not declare, reported next to the other errors."""

    unknown_message = "Unknown setting."

    def to_internal_value(self, data):
        if not isinstance(data, Mapping):
            return super().to_internal_value(data)  # DRF's "expected a dictionary"
        errors: dict = {}
        value = None
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            errors = dict(exc.detail)
        for key in data:
            if key not in self.fields:
                errors[key] = [self.unknown_message]
        if errors:
            raise serializers.ValidationError(errors)
        return value


class ConfigRateLimitSerializer(StrictSerializer):
    limit = Integer(min_value=1, help_text="Requests admitted per window, per agent.")
    window_s = Number(
        validators=[_above(0)],
        help_text=(
            "Window (s) of the limit (GCRA: a burst of `limit`, then one per window_s / limit)."
        ),
    )


class ConfigRetrySerializer(StrictSerializer):
    max_attempts = Integer(min_value=1, max_value=10, help_text="Attempts per run, first included.")
    base_delay_ms = Number(min_value=0, help_text="Backoff base: base * 2^(attempt-1), jittered.")
    max_delay_ms = Number(min_value=0, help_text="Backoff cap; at least base_delay_ms.")

    def validate(self, attrs):
        if attrs["max_delay_ms"] < attrs["base_delay_ms"]:
            raise serializers.ValidationError({"max_delay_ms": ["Must be at least base_delay_ms."]})
        return attrs


class ConfigCircuitSerializer(StrictSerializer):
    failure_threshold = Integer(min_value=1, help_text="Consecutive failures that open it.")
    wait_in_open_s = Number(validators=[_above(0)], help_text="Time open before a probe.")
    permitted_probes = Integer(min_value=1, help_text="Calls admitted while half-open.")
    window_size = Integer(min_value=1, help_text="Calls in the failure-rate window.")
    minimum_calls = Integer(min_value=1, help_text="Calls before the rate is judged.")
    failure_rate_threshold = Number(
        min_value=1, max_value=100, help_text="Failure percentage that opens it."
    )
    slow_call_s = Number(
        allow_null=True,
        validators=[_above(0)],
        help_text="A call slower than this counts as a failure; null: never.",
    )

    def validate(self, attrs):
        if attrs["minimum_calls"] > attrs["window_size"]:
            raise serializers.ValidationError({"minimum_calls": ["Must not exceed window_size."]})
        return attrs


class ConfigTimeoutsSerializer(StrictSerializer):
    timeout_s = Number(validators=[_above(0)], help_text="One attempt of a handler.")
    total_timeout_s = Number(
        validators=[_above(0)], help_text="A whole run, retries included; at least timeout_s."
    )

    def validate(self, attrs):
        if attrs["total_timeout_s"] < attrs["timeout_s"]:
            raise serializers.ValidationError({"total_timeout_s": ["Must be at least timeout_s."]})
        return attrs


class ConfigNodesSerializer(StrictSerializer):
    heartbeat_interval_s = Number(
        min_value=1,
        max_value=MAX_HEARTBEAT_INTERVAL_S,
        help_text="Between two heartbeats; also how long a process caches this document.",
    )
    unhealthy_after_intervals = Integer(min_value=1, help_text="Missed beats: UNHEALTHY.")
    failed_after_intervals = Integer(
        min_value=1, help_text="Missed beats: FAILED (failover); above unhealthy."
    )
    lease_s = Number(
        validators=[_above(0)], help_text="A claimed run's lease; above the heartbeat interval."
    )
    pending_timeout_s = Number(validators=[_above(0)], help_text="PENDING longer: re-queued.")
    max_attempts = Integer(min_value=1, help_text="Deliveries of a run before it fails.")

    def validate(self, attrs):
        errors = {}
        if attrs["failed_after_intervals"] <= attrs["unhealthy_after_intervals"]:
            errors["failed_after_intervals"] = ["Must be greater than unhealthy_after_intervals."]
        if attrs["lease_s"] <= attrs["heartbeat_interval_s"]:
            errors["lease_s"] = ["Must be greater than heartbeat_interval_s."]
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


class ConfigScalingSerializer(StrictSerializer):
    target_cpu_utilization = Number(validators=[_above(0)], max_value=1)
    target_memory_utilization = Number(validators=[_above(0)], max_value=1)
    target_requests_per_replica = Number(validators=[_above(0)])
    tolerance = Number(min_value=0, max_value=1, help_text="No change within this ratio of 1.")
    min_replicas = Integer(min_value=1)
    max_replicas = Integer(min_value=1, help_text="At least min_replicas.")
    scale_down_stabilization_s = Number(
        min_value=0, help_text="Scale down to the highest recommendation of this window."
    )

    def validate(self, attrs):
        if attrs["max_replicas"] < attrs["min_replicas"]:
            raise serializers.ValidationError({"max_replicas": ["Must be at least min_replicas."]})
        return attrs


class ConfigRoutingSerializer(StrictSerializer):
    strategy = serializers.ChoiceField(choices=ROUTING_STRATEGIES)
    reserved_high_priority_share = Number(
        min_value=0, max_value=0.9, help_text="Share of each node kept for high priority."
    )


class ConfigEventsSerializer(StrictSerializer):
    retention_days = Integer(min_value=1, help_text="prune_events deletes older events.")


class ConfigDocumentSerializer(StrictSerializer):
    """The whole live configuration document (docs/CONFIGURATION.md)."""

    rate_limit = ConfigRateLimitSerializer()
    retry = ConfigRetrySerializer()
    circuit = ConfigCircuitSerializer()
    timeouts = ConfigTimeoutsSerializer()
    nodes = ConfigNodesSerializer()
    scaling = ConfigScalingSerializer()
    routing = ConfigRoutingSerializer()
    events = ConfigEventsSerializer()


def plain(value):
    """validated_data without DRF's container types: what is stored and compared."""
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, str):
        return str(value)  # ErrorDetail -> str
    return value
