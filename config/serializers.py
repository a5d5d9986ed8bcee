"""JSON bodies are checked against the types the schema declares, without coercion.

DRF turns 5 into "5" for a CharField, "5" into 5 for an IntegerField and "true" into
True for a BooleanField: right for form data and query strings, wrong for a JSON API
whose schema says "string" or "integer" -- a client sending the wrong type has a bug it
should hear about (400 INVALID_REQUEST), not a silently converted value. Likewise a
string longer than its field's maxLength is refused as sent, before the field trims it.
"""

from __future__ import annotations

from collections.abc import Mapping

from rest_framework import serializers
from rest_framework.fields import empty

_EXPECTED = "Expected {kind}, got {got}."
_TOO_LONG = "Ensure this field has no more than {max_length} characters."


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


def length_errors(field: serializers.Field, value: str) -> list[str]:
    """The schema's maxLength holds for a string as sent: a field trims it (DRF's
    trim_whitespace) before its own check, which would let through a string that fits
    only once its whitespace is gone -- one the published schema refuses."""
    max_length = field.max_length if isinstance(field, serializers.CharField) else None
    if max_length is not None and len(value) > max_length:
        return [_TOO_LONG.format(max_length=max_length)]
    return []


def type_errors(field: serializers.Field, value) -> list[str]:
    if value is None:
        return []  # allow_null is the field's own business
    wanted = _wanted(field)
    kind = _json_kind(value)
    if wanted is not None and kind not in wanted:
        return [_EXPECTED.format(kind=" or ".join(wanted), got=kind)]
    if kind == "string":
        return length_errors(field, value)
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


class _SentValuesMixin:
    """Checks each field's value as sent (``_problems``) before the fields convert it."""

    def _problems(self, field: serializers.Field, value) -> list[str]:
        raise NotImplementedError

    def to_internal_value(self, data):
        errors = {}
        if isinstance(data, Mapping):
            for name, field in self.fields.items():
                if field.read_only:
                    continue
                value = data.get(name, empty)
                if value is empty:
                    continue
                problems = self._problems(field, value)
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


class StrictTypesMixin(_SentValuesMixin):
    """For serializers of JSON bodies: a value of the wrong JSON type is refused, and a
    string longer than its field's maxLength (as sent)."""

    def _problems(self, field, value) -> list[str]:
        return type_errors(field, value)


class SentLengthMixin(_SentValuesMixin):
    """For serializers of query strings (every value a string): a value longer than its
    field's maxLength is refused as sent, before the field trims it."""

    def _problems(self, field, value) -> list[str]:
        return length_errors(field, value) if isinstance(value, str) else []
