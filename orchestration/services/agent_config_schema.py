"""What an agent's config JSON may say to the orchestrator, checked before it is saved.

agent_policy() lays an agent's config over the live configuration: a section the agent
names (rate_limit, retry, circuit) may set any of its fields, a field it leaves out (or
sets to null) keeps the live value, and timeout_s / total_timeout_s sit at the top
level. Each known section is therefore validated as the live section with the agent's
fields laid over it -- the merge the orchestrator performs -- by the live configuration's
own serializers, so the two cannot disagree about what is valid. A rule broken only
together with a live value says which live value it was.

Keys the orchestrator does not read are left alone: handlers read their own settings
from the same object. The built-in http handler's url and connect_timeout_s are
checked here because that handler ships with the orchestrator.
"""

from __future__ import annotations

import math
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import URLValidator
from rest_framework import serializers

from orchestration.services.config import config_current, config_errors_flat, policy_defaults
from orchestration.services.config_schema import (
    ConfigCircuitSerializer,
    ConfigRateLimitSerializer,
    ConfigRetrySerializer,
    ConfigTimeoutsSerializer,
    plain,
)

HTTP_HANDLER = "http"

SECTIONS: dict[str, type[serializers.Serializer]] = {
    "rate_limit": ConfigRateLimitSerializer,
    "retry": ConfigRetrySerializer,
    "circuit": ConfigCircuitSerializer,
}
# The one field agent_policy() keeps when it is null (null: no slow-call rule).
NULL_MEANS_VALUE = frozenset({"slow_call_s"})

_http_url = URLValidator(schemes=["http", "https"])


def _field_errors(field: serializers.Field, value: Any, path: str) -> list[tuple[str, str]]:
    try:
        field.run_validation(value)
    except serializers.ValidationError as exc:
        return config_errors_flat(plain(exc.detail), path)
    return []


def _section_errors(section: str, value: Any, live: dict) -> list[tuple[str, str]]:
    if not isinstance(value, dict):
        return [(section, "Must be an object of settings.")]
    given = {k: v for k, v in value.items() if v is not None or k in NULL_MEANS_VALUE}
    serializer = SECTIONS[section](data={**live[section], **given})
    if serializer.is_valid():
        return []
    errors = []
    for path, message in config_errors_flat(plain(serializer.errors), section):
        field = path.split(".", 1)[1] if "." in path else ""
        if field and field not in given and field in live[section]:
            message = f"{message} (the live value {live[section][field]!r} applies here)"
        errors.append((path, message))
    return errors


def _timeout_errors(config: dict, live: dict) -> list[tuple[str, str]]:
    fields = ConfigTimeoutsSerializer().fields
    errors = []
    for name in ("timeout_s", "total_timeout_s"):
        if config.get(name) is not None:
            errors += _field_errors(fields[name], config[name], name)
    if errors:
        return errors
    timeout = config.get("timeout_s") or live["timeout_s"]
    total = config.get("total_timeout_s") or live["total_timeout_s"]
    # Only a total the agent set itself is held to it; a longer timeout_s than the live
    # total raises the total (agent_policy), which is what the agent asked for.
    if config.get("total_timeout_s") is not None and total < timeout:
        errors.append(("total_timeout_s", f"Must be at least timeout_s ({timeout})."))
    return errors


def _http_errors(config: dict, *, require_url: bool) -> list[tuple[str, str]]:
    errors = []
    url = config.get("url")
    if url in (None, ""):
        if require_url:
            errors.append(("url", "The http handler needs the agent's URL (http or https)."))
    elif not isinstance(url, str):
        errors.append(("url", "Must be a string."))
    else:
        try:
            _http_url(url)
        except DjangoValidationError:
            errors.append(("url", "Enter a valid http or https URL."))
    connect = config.get("connect_timeout_s")
    if connect is not None and (
        isinstance(connect, bool)
        or not isinstance(connect, int | float)
        or not math.isfinite(connect)
        or connect <= 0
    ):
        errors.append(("connect_timeout_s", "Must be a number of seconds greater than 0."))
    return errors


def agent_config_errors(
    config: Any, *, handler: str = "", require_url: bool = True, live: dict | None = None
) -> list[tuple[str, str]]:
    """(dotted path, message) for every problem; empty when the config is usable.

    require_url: whether an http agent's url must be in this very object (False when
    checking one piece of a config that is assembled from several, see the admin).
    """
    if not isinstance(config, dict):
        return [("config", "Must be a JSON object.")]
    live = live or policy_defaults(config_current())
    errors: list[tuple[str, str]] = []
    for section in SECTIONS:
        if section in config and config[section] is not None:
            errors += _section_errors(section, config[section], live)
    errors += _timeout_errors(config, live)
    errors += _http_errors(config, require_url=require_url and handler == HTTP_HANDLER)
    return errors
