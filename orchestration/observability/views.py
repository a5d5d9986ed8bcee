"""GET /metrics: the Prometheus text exposition format, for localhost or a bearer token.

Access (docs/OBSERVABILITY.md): with METRICS_TOKEN set, ``Authorization: Bearer <token>``
is required from every address; without it, only loopback callers are served unless
METRICS_ALLOW_REMOTE is on. Refusals are plain text: a scraper is not a browser.
"""

from __future__ import annotations

import hmac
import threading

from django.conf import settings
from django.http import HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from orchestration.observability.collectors import FleetCollector
from orchestration.observability.metrics import event_publish_failures_sync

# generate_latest() writes format 0.0.4; say so whatever prometheus_client calls "latest".
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})

_single_process_lock = threading.Lock()
_single_process_ready = False


def scrape_registry() -> CollectorRegistry:
    """The registry one scrape reads.

    Multiprocess mode: a fresh registry summing every process's files, plus the fleet
    gauges, which exist only here so they are reported once. Otherwise the process's own
    default registry, to which the fleet gauges are added once.
    """
    global _single_process_ready
    if settings.PROMETHEUS_MULTIPROC_DIR:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=settings.PROMETHEUS_MULTIPROC_DIR)
        registry.register(FleetCollector())
        return registry
    if not _single_process_ready:
        with _single_process_lock:
            if not _single_process_ready:
                REGISTRY.register(FleetCollector())
                _single_process_ready = True
    return REGISTRY


def _refusal(status: int, message: str, **headers) -> HttpResponse:
    response = HttpResponse(message + "\n", status=status, content_type="text/plain")
    for name, value in headers.items():
        response[name] = value
    return response


def _access_refusal(request) -> HttpResponse | None:
    token = settings.METRICS_TOKEN
    if token:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode(), token.encode()
        ):
            return _refusal(
                401,
                "401 Unauthorized: /metrics needs 'Authorization: Bearer <METRICS_TOKEN>'.",
                **{"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        return None
    if settings.METRICS_ALLOW_REMOTE or request.META.get("REMOTE_ADDR") in LOOPBACK:
        return None
    return _refusal(
        403,
        "403 Forbidden: /metrics is served to localhost only; "
        "set METRICS_TOKEN (or METRICS_ALLOW_REMOTE) to scrape it from elsewhere.",
    )


@never_cache
@require_GET
def metrics(request) -> HttpResponse:
    refusal = _access_refusal(request)
    if refusal is not None:
        return refusal
    event_publish_failures_sync()
    return HttpResponse(generate_latest(scrape_registry()), content_type=CONTENT_TYPE)
