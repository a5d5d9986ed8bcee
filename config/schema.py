"""The schema class of the API: every operation also documents its error answers.

Views declare their success bodies (and the contract's own failures, e.g. POST
/api/orchestrate); the errors every view can give -- bad input, missing or refused
credentials, another organization's object, a body too large, throttling -- come from
one place here, in the one error envelope (config/exceptions.py), so a new endpoint is
described completely without repeating them.
"""

from __future__ import annotations

from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers

from config.exceptions import STATUS_CODES


class EnvelopeErrorSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="The contract's error code, e.g. INVALID_REQUEST.")
    message = serializers.CharField()
    details = serializers.JSONField(
        required=False, help_text="For INVALID_REQUEST: the bad fields and what is wrong."
    )


class ErrorEnvelopeSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    error = EnvelopeErrorSerializer()
    timestamp = serializers.DateTimeField()


_DESCRIPTIONS = {
    400: "The request is invalid (INVALID_REQUEST): details name the fields.",
    401: "No, bad, revoked or expired credentials (UNAUTHENTICATED).",
    403: "Authenticated, but not allowed to do this (FORBIDDEN).",
    404: "No such object in the caller's organization, or a stale cursor (NOT_FOUND).",
    413: "The request body is larger than DATA_UPLOAD_MAX_MEMORY_SIZE (PAYLOAD_TOO_LARGE).",
    415: "The body is not JSON (UNSUPPORTED_MEDIA_TYPE).",
    429: "Too many requests or failed authentications (RATE_LIMITED); Retry-After is set.",
    503: "The database is unreachable (SERVICE_UNAVAILABLE); Retry-After is set.",
}
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class ApiAutoSchema(AutoSchema):
    def get_operation(self, *args, **kwargs):
        operation = super().get_operation(*args, **kwargs)
        if operation is None:
            return None
        responses = operation.setdefault("responses", {})
        for code in self._error_codes(operation):
            if str(code) not in responses:
                responses[str(code)] = self._error_response(code)
        return operation

    def _error_codes(self, operation: dict) -> list[int]:
        codes: list[int] = []
        authenticated = any(requirement for requirement in operation.get("security", [{}]))
        has_body = self.method in _BODY_METHODS
        has_query = any(p.get("in") == "query" for p in operation.get("parameters", []))
        has_header = any(p.get("in") == "header" for p in operation.get("parameters", []))
        if has_body or has_query or has_header:
            codes.append(400)
        if authenticated:
            codes += [401, 403]
        if "{" in self.path or has_query:
            # A path names an object; a list's cursor may have gone stale.
            codes.append(404)
        if has_body:
            codes += [413, 415]
        if authenticated:
            codes.append(429)
        # Any endpoint that reads the database answers 503 while it is unreachable.
        codes.append(503)
        return codes

    def _error_response(self, code: int) -> dict:
        response = self._get_response_for_code(ErrorEnvelopeSerializer, str(code))
        response["description"] = _DESCRIPTIONS.get(code, STATUS_CODES.get(code, "Error"))
        return response
