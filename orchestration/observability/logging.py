"""Structured logs: structlog's ProcessorFormatter renders every stdlib record.

Django, Celery and our own modules keep using ``logging.getLogger(__name__)``; the
formatter turns each record into one JSON object per line (LOG_FORMAT=json) or a
readable line (LOG_FORMAT=console). Inside a run every line also carries run_id, agent,
organization, node and attempt, read from a ContextVar that run_execute binds for the
duration of the run; the executor copies the context into the handler's thread.

This module is imported by Django's logging set-up, before the apps are loaded: it must
not import models.
"""

from __future__ import annotations

import functools
import logging
import logging.config
import sys
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar

import structlog

LOG_FORMATS = ("json", "console")
RUN_FIELDS = ("run_id", "agent", "organization", "node", "attempt")
# JSON lines start with these keys, in this order, whatever else a line carries.
LEADING_FIELDS = ("timestamp", "level", "logger", "message", *RUN_FIELDS)

_run_fields: ContextVar[dict[str, Any] | None] = ContextVar("acp_run_log_fields", default=None)

F = TypeVar("F", bound=Callable[..., Any])


# --- The run's context --------------------------------------------------------------------


def run_log_scope(func: F) -> F:
    """Whatever ``func`` binds with run_log_bind is unbound when it returns or raises.

    A worker thread runs one run after another: without the reset, the lines logged
    between two runs would carry the previous run's id.
    """

    @functools.wraps(func)
    def scoped(*args, **kwargs):
        token = _run_fields.set(None)
        try:
            return func(*args, **kwargs)
        finally:
            _run_fields.reset(token)

    return scoped  # type: ignore[return-value]


def run_log_bind(*, run, node_id: str) -> None:
    """From now on (in this context) every log line carries the run's identity."""
    _run_fields.set(
        {
            "run_id": str(run.pk),
            "agent": run.agent.slug,
            "organization": run.organization.slug,
            "node": node_id,
            "attempt": run.attempt,
        }
    )


def run_log_fields() -> dict[str, Any]:
    """The fields bound for the run executing in this context ({} outside a run)."""
    return dict(_run_fields.get() or {})


def add_run_fields(logger, method_name: str, event_dict: dict) -> dict:
    """structlog processor: the bound run fields, unless the line sets them itself."""
    fields = _run_fields.get()
    if fields:
        for name, value in fields.items():
            event_dict.setdefault(name, value)
    return event_dict


# --- Formatting -----------------------------------------------------------------------------


def lead_with_standard_fields(logger, method_name: str, event_dict: dict) -> dict:
    """structlog processor: the standard keys first, so lines read alike."""
    lead = {name: event_dict.pop(name) for name in LEADING_FIELDS if name in event_dict}
    return {**lead, **event_dict}


def _shared_processors() -> list:
    return [
        structlog.contextvars.merge_contextvars,
        add_run_fields,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def formatter(log_format: str = "json") -> logging.Formatter:
    """The formatter of the console handler (settings.LOGGING names it with "()")."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {LOG_FORMATS}, got {log_format!r}")
    if log_format == "json":
        tail = [
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("message"),
            lead_with_standard_fields,
            structlog.processors.JSONRenderer(),
        ]
    else:
        tail = [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    return structlog.stdlib.ProcessorFormatter(
        # Records from stdlib loggers (Django, Celery, ours): their ``extra`` fields too.
        foreign_pre_chain=[*_shared_processors(), structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    )


def logging_configure(config: dict) -> None:
    """settings.LOGGING_CONFIG: the stdlib configuration, then structlog on top of it.

    structlog's own loggers (structlog.get_logger) hand their events to the stdlib
    handlers, so both kinds of logger end in the same formatter and the same stream.
    """
    logging.config.dictConfig(config)
    structlog.configure(
        processors=[
            *_shared_processors(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
