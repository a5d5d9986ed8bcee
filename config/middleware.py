"""Under /api/ every answer is JSON: no HTML error page, even for a URL that does not exist."""

from __future__ import annotations

import logging

from django.core.exceptions import (
    BadRequest,
    PermissionDenied,
    RequestDataTooBig,
    SuspiciousOperation,
)
from django.http import Http404

from config.exceptions import STATUS_CODES, error_response

logger = logging.getLogger(__name__)

_MESSAGES = {
    400: "Bad request.",
    403: "Forbidden.",
    404: "Not found.",
    405: "Method not allowed.",
    413: "Request body too large.",
    500: "Internal server error.",
}


def _is_api(request) -> bool:
    return request.path.startswith("/api/")


class ApiErrorMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (
            _is_api(request)
            and response.status_code >= 400
            and not response.get("Content-Type", "").startswith("application/json")
            and response.status_code in _MESSAGES
        ):
            code = STATUS_CODES.get(response.status_code, "ERROR")
            return error_response(code, _MESSAGES[response.status_code], response.status_code)
        return response

    def process_exception(self, request, exception):
        if not _is_api(request):
            return None
        if isinstance(exception, RequestDataTooBig):
            return error_response("PAYLOAD_TOO_LARGE", str(exception), 413)
        if isinstance(exception, Http404 | PermissionDenied | BadRequest | SuspiciousOperation):
            return None  # Django answers 4xx; __call__ puts it in the envelope
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response("INTERNAL_ERROR", "Internal server error.", 500)
