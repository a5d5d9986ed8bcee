"""JSON bodies are checked against the types the schema declares, without coercion.

DRF turns 5 into "5" for a CharField, "5" into 5 for an IntegerField and "true" into
True for a BooleanField: right for form data and query strings, wrong for a JSON API
whose schema says "string" or "integer" -- a client sending the wrong type has a bug it
should hear about (400 INVALID_REQUEST), not a silently converted value.
"""

from __future__ import annotations

from collections.abc import Mapping

from rest_framework import serializers
from rest_framework.fields import empty

_EXPECTED = "Expected {kind}, got {got}."


def _json_kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _wanted(field: serializers.Field) -> tuple[str, ...] | None:
    """The JSON kinds a field accepts; None: anything (the field validates it)."""
    if isinstance(field, serializers.BooleanField):
        return ("boolean",)
    if isinstance(field, serializers.IntegerField):
        return ("integer",)
    if isinstance(field, serializers.FloatField | serializers.DecimalField):
        return ("integer", "number")
    if isinstance(field, serializers.ChoiceField):
        keys = list(field.choices)
        return ("string",) if keys and all(isinstance(k, str) for k in keys) else None
    if isinstance(field, serializers.CharField | serializers.DateTimeField):
        return ("string",)
    if isinstance(field, serializers.DateField | serializers.TimeField):
        return ("string",)
    if isinstance(field, serializers.ListField | serializers.ListSerializer):
        return ("array",)
    if isinstance(field, serializers.DictField | serializers.Serializer):
        return ("object",)
    return None


def type_errors(field: serializers.Field, value) -> list[str]:
    if value is None:
        return []  # allow_null is the field's own business
    wanted = _wanted(field)
    kind = _json_kind(value)
    if wanted is not None and kind not in wanted:
        return [_EXPECTED.format(kind=" or ".join(wanted), got=kind)]
    if isinstance(field, serializers.ListField):
        for item in value:
            errors = type_errors(field.child, item)
            if errors:
                return errors
    elif isinstance(field, serializers.DictField):
        for item in value.values():
            errors = type_errors(field.child, item)
            if errors:
                return errors
    return []


class StrictTypesMixin:
    """For serializers of JSON bodies: a value of the wrong JSON type is refused."""

    def to_internal_value(self, data):
        errors = {}
        if isinstance(data, Mapping):
            for name, field in self.fields.items():
                if field.read_only:
                    continue
                value = data.get(name, empty)
                if value is empty:
                    continue
                problems = type_errors(field, value)
                if problems:
                    errors[name] = problems
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if not errors or not isinstance(exc.detail, dict):
                raise
            # Every field's problem at once: the type errors and the fields' own.
            raise serializers.ValidationError({**exc.detail, **errors}) from exc
        if errors:
            raise serializers.ValidationError(errors)
        return value
