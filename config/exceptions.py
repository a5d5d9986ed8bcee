"""The one error envelope of the API: {"success": false, "error": {...}, "timestamp"}."""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import InterfaceError
from django.db import OperationalError as DatabaseOperationalError
from django.http import Http404, JsonResponse
from django.utils import timezone
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger(__name__)

# DRF exception class -> the contract's error code.
_CODES: list[tuple[type[Exception], str]] = [
    (exceptions.ParseError, "INVALID_REQUEST"),
    (exceptions.ValidationError, "INVALID_REQUEST"),
    (exceptions.NotAuthenticated, "UNAUTHENTICATED"),
    (exceptions.AuthenticationFailed, "UNAUTHENTICATED"),
    (exceptions.PermissionDenied, "FORBIDDEN"),
    (exceptions.NotFound, "NOT_FOUND"),
    (exceptions.MethodNotAllowed, "METHOD_NOT_ALLOWED"),
    (exceptions.NotAcceptable, "NOT_ACCEPTABLE"),
    (exceptions.UnsupportedMediaType, "UNSUPPORTED_MEDIA_TYPE"),
    (exceptions.Throttled, "RATE_LIMITED"),
]

STATUS_CODES = {
    400: "INVALID_REQUEST",
    401: "UNAUTHENTICATED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
}


# What a client should wait before trying again while the database is unreachable (a
# restart or failover takes seconds); /readyz answers with the same value.
DATABASE_RETRY_AFTER_S = 5
DATABASE_ERRORS = (DatabaseOperationalError, InterfaceError)


class ApiError(exceptions.APIException):
    """An error with a contract code, raised by services and views alike."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        http_status: int = 400,
        details=None,
        headers: dict | None = None,
    ) -> None:
        super().__init__(detail=message, code=code)
        self.status_code = http_status
        self.error_code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def error_body(code: str, message: str, details=None, **extra) -> dict:
    error = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"success": False, **extra, "error": error, "timestamp": timezone.now().isoformat()}


def error_response(
    code: str, message: str, http_status: int, details=None, **extra
) -> JsonResponse:
    """For plain Django views and middleware (outside DRF)."""
    return JsonResponse(error_body(code, message, details, **extra), status=http_status)


def database_unavailable_body() -> tuple[dict, dict]:
    """503 SERVICE_UNAVAILABLE while the database cannot be reached: (body, headers).

    The error is the driver's (connection refused, server restarting, connection lost);
    its text goes to the log only, never to the client.
    """
    body = error_body(
        "SERVICE_UNAVAILABLE",
        "The service is temporarily unavailable (database unreachable); try again shortly.",
        {"retryAfter": DATABASE_RETRY_AFTER_S},
    )
    return body, {"Retry-After": str(DATABASE_RETRY_AFTER_S)}


def _message_for(exc: exceptions.APIException) -> str:
    detail = exc.detail
    if isinstance(detail, str):
        return str(detail)
    if isinstance(exc, exceptions.ValidationError):
        return "The request is invalid; see details."
    return str(exc.default_detail)


def api_exception_handler(exc, context):
    if isinstance(exc, Http404):
        exc = exceptions.NotFound("Not found.")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()

    if isinstance(exc, DATABASE_ERRORS):
        request = context.get("request")
        logger.warning(
            "database unavailable on %s %s: %s",
            getattr(request, "method", "?"),
            getattr(request, "path", "?"),
            exc,
        )
        body, headers = database_unavailable_body()
        return Response(body, status=status.HTTP_503_SERVICE_UNAVAILABLE, headers=headers)

    if isinstance(exc, ApiError):
        response = Response(
            error_body(exc.error_code, exc.message, exc.details),
            status=exc.status_code,
            headers=exc.headers,
        )
        return response

    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # unexpected: ApiErrorMiddleware turns it into a 500 envelope

    code = STATUS_CODES.get(response.status_code, "ERROR")
    for klass, mapped in _CODES:
        if isinstance(exc, klass):
            code = mapped
            break
    details = None
    if isinstance(exc, exceptions.ValidationError):
        details = exc.detail
    elif isinstance(exc, exceptions.Throttled) and exc.wait is not None:
        details = {"retryAfter": int(exc.wait + 0.999)}
    response.data = error_body(code, _message_for(exc), details)
    if response.status_code == status.HTTP_401_UNAUTHORIZED:
        response.headers.setdefault("WWW-Authenticate", 'Bearer realm="api"')
    return response
