"""Under /api/ every answer is JSON: no HTML error page, even for a URL that does not exist."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import (
    BadRequest,
    PermissionDenied,
    RequestDataTooBig,
    SuspiciousOperation,
)
from django.http import Http404, JsonResponse

from config.exceptions import (
    DATABASE_ERRORS,
    STATUS_CODES,
    database_unavailable_body,
    error_response,
)

logger = logging.getLogger(__name__)

_MESSAGES = {
    400: "Bad request.",
    403: "Forbidden.",
    404: "Not found.",
    405: "Method not allowed.",
    413: "Request body too large.",
    500: "Internal server error.",
    503: "Service temporarily unavailable.",
}


def _is_api(request) -> bool:
    return request.path.startswith("/api/")


def _body_too_large(request):
    """413 before any view runs, from the declared length, whether or not it reads the body.

    (Bodies sent without a length are cut off where they are read: config/parsers.py.)
    """
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is None or not _is_api(request):
        return None
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if length <= limit:
        return None
    # POST /api/orchestrate answers failures in its own shape (API.md).
    extra = {"status": "failed"} if request.path.rstrip("/") == "/api/orchestrate" else {}
    return error_response(
        "PAYLOAD_TOO_LARGE", f"Request body is larger than {limit} bytes.", 413, **extra
    )


class ApiErrorMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        too_large = _body_too_large(request)
        if too_large is not None:
            return too_large
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
        if isinstance(exception, DATABASE_ERRORS):
            # Outside DRF views (DRF's own handler answers the same): a database that is
            # restarting or failing over is a 503 to retry, not a 500.
            logger.warning(
                "database unavailable on %s %s: %s", request.method, request.path, exception
            )
            body, headers = database_unavailable_body()
            return JsonResponse(body, status=503, headers=headers)
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response("INTERNAL_ERROR", "Internal server error.", 500)
