"""The API's JSON parser: DRF's, plus the limits every body must respect.

- The body is at most DATA_UPLOAD_MAX_MEMORY_SIZE bytes (413 PAYLOAD_TOO_LARGE). Django
  checks it only for request.body, which DRF does not use, so it is checked here too.
- Nesting is at most API_JSON_MAX_DEPTH levels (400 INVALID_REQUEST): deeper documents
  would otherwise exhaust the parser's recursion and end in a 500.
- No string or key holds U+0000 (400 INVALID_REQUEST): PostgreSQL's jsonb and text
  columns cannot store it, so such a body could only fail later, as a server error.
"""

from __future__ import annotations

import json

from django.conf import settings
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import JSONParser


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body too large."
    default_code = "payload_too_large"


def _reject_constant(value: str):
    raise ValueError(f"{value} is not valid JSON")


def json_check(data, *, max_depth: int) -> None:
    """Raise ParseError if data nests deeper than max_depth or carries a NUL character."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > max_depth:
                raise ParseError(f"JSON nested deeper than {max_depth} levels.")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and "\x00" in key:
                    raise ParseError("JSON strings may not contain U+0000.")
                stack.append((item, depth + 1))
        elif isinstance(value, str) and "\x00" in value:
            raise ParseError("JSON strings may not contain U+0000.")


class ApiJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raw = stream.read() if limit is None else stream.read(limit + 1)
        if limit is not None and len(raw) > limit:
            raise PayloadTooLarge(f"Request body is larger than {limit} bytes.")
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            data = json.loads(raw.decode(encoding), parse_constant=_reject_constant)
        except RecursionError:
            raise ParseError(
                f"JSON nested deeper than {settings.API_JSON_MAX_DEPTH} levels."
            ) from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        json_check(data, max_depth=settings.API_JSON_MAX_DEPTH)
        return data
