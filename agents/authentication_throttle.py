"""Throttles on failed authentication: per client address, in the shared cache.

Keys are 256-bit secrets, so guessing one is hopeless; what a flood of bad credentials
does cost is a database lookup per attempt and noise in the logs. A client (by its
address: REMOTE_ADDR, as the reverse proxy in front sets it) that failed
AUTH_FAILURE_LIMIT times within AUTH_FAILURE_WINDOW_S gets 429 RATE_LIMITED with
Retry-After for every further attempt until the window ends. The admin login is
limited the same way, per address and per username (ADMIN_LOGIN_FAILURE_LIMIT within
ADMIN_LOGIN_WINDOW_S), because a password is guessable where a key is not.

Counters are fixed windows in the cache (Redis in production, so every process shares
them). When the cache is unreachable the throttle steps aside: authentication itself
must not fail because a counter could not be read.
"""

from __future__ import annotations

import functools
import logging
import math
import time

from django.conf import settings
from django.core.cache import cache
from django.http import HttpResponse
from rest_framework.exceptions import Throttled

logger = logging.getLogger(__name__)


def client_address(request) -> str:
    return request.META.get("REMOTE_ADDR") or "unknown"


def _window(window_s: int, now: float) -> tuple[int, int]:
    """(window index, seconds until it ends)."""
    index = int(now // window_s)
    return index, max(1, math.ceil((index + 1) * window_s - now))


def _count(key: str, window_s: int) -> int:
    try:
        return int(cache.get(key) or 0)
    except Exception as exc:  # the cache is down: do not throttle
        logger.warning("auth throttle: cache unreachable (%s)", exc)
        return 0


def _bump(key: str, window_s: int) -> None:
    try:
        if not cache.add(key, 1, timeout=window_s + 1):
            cache.incr(key)
    except ValueError:
        # Expired between add and incr: this failure opens the next window's count.
        cache.add(key, 1, timeout=window_s + 1)
    except Exception as exc:
        logger.warning("auth throttle: cache unreachable (%s)", exc)


def _keys(scope: str, values: list[str], window_s: int, now: float) -> tuple[list[str], int]:
    index, retry_after = _window(window_s, now)
    return [f"authfail:{scope}:{value}:{index}" for value in values], retry_after


# --- API credentials (API keys, node tokens, run tokens) ---------------------------------


def auth_failure_check(request) -> None:
    """Raise Throttled if this client already failed too often in this window."""
    limit, window_s = settings.AUTH_FAILURE_LIMIT, settings.AUTH_FAILURE_WINDOW_S
    if limit <= 0:
        return
    keys, retry_after = _keys("api", [client_address(request)], window_s, time.time())
    if _count(keys[0], window_s) >= limit:
        raise Throttled(
            wait=retry_after,
            detail=f"Too many failed authentications from this address; retry in {retry_after} s.",
        )


def auth_failure_note(request) -> None:
    if settings.AUTH_FAILURE_LIMIT <= 0:
        return
    window_s = settings.AUTH_FAILURE_WINDOW_S
    keys, _ = _keys("api", [client_address(request)], window_s, time.time())
    _bump(keys[0], window_s)


# --- the admin login ---------------------------------------------------------------------


def _login_keys(request) -> tuple[list[str], int]:
    values = [f"ip:{client_address(request)}"]
    username = (request.POST.get("username") or "").strip().lower()
    if username:
        values.append(f"user:{username[:150]}")
    return _keys("login", values, settings.ADMIN_LOGIN_WINDOW_S, time.time())


def login_rate_limited(view):
    """Wrap the admin's login view: too many failed logins answer 429 with Retry-After."""

    @functools.wraps(view)
    def wrapped(request, *args, **kwargs):
        limit, window_s = settings.ADMIN_LOGIN_FAILURE_LIMIT, settings.ADMIN_LOGIN_WINDOW_S
        if request.method != "POST" or limit <= 0:
            return view(request, *args, **kwargs)
        keys, retry_after = _login_keys(request)
        if any(_count(key, window_s) >= limit for key in keys):
            response = HttpResponse(
                f"Too many failed logins; try again in {retry_after} seconds.\n",
                status=429,
                content_type="text/plain; charset=utf-8",
            )
            response["Retry-After"] = str(retry_after)
            return response
        response = view(request, *args, **kwargs)
        # A successful login redirects; a failed one shows the form again (200).
        if response.status_code == 200:
            for key in keys:
                _bump(key, window_s)
        return response

    return wrapped
