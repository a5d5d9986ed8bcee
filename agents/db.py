"""Timestamps read from PostgreSQL at the driver's speed.

Django reads every ``timestamptz`` value through its own loader
(``django.db.backends.postgresql.psycopg_any.BaseTzLoader``): a Python subclass of
psycopg's loader, so psycopg's compiled loader is not used; it parses the text in Python,
then sets the tzinfo to the connection's Django time zone. With USE_TZ and no TIME_ZONE of
its own, that time zone is UTC and Django sets the session's TimeZone to UTC, so psycopg's
own loader returns the same value: the same instant, tzinfo ``datetime.UTC``. The compiled
loader (psycopg_binary) does so in ~0.2 us a value against Django's ~3.8 us; a run's row
carries seven timestamps, a claimed run with its agent and organization eleven, a page of
the run list fifty rows of them.

``timestamps_fast(connection)`` puts psycopg's loader behind Django's on a connection whose
session and Django time zones are both UTC; any other connection keeps Django's.
Connected to ``connection_created`` in AgentsConfig.ready(), so every new connection and
every connection taken from a pool gets it.
"""

from __future__ import annotations

import datetime

import psycopg
from psycopg.adapt import Loader
from psycopg.pq import Format

TIMESTAMPTZ_OID = psycopg.adapters.types["timestamptz"].oid
# psycopg's default loader: the compiled one when psycopg_binary (or psycopg_c) is present.
_DRIVER_LOADER = psycopg.adapters.get_loader(TIMESTAMPTZ_OID, Format.TEXT)


class UtcTimestamptzLoader(Loader):
    """psycopg's timestamptz loader, under the ``timezone`` attribute Django's
    ``create_cursor`` compares with the connection's (a cursor whose connection's loader
    names another time zone gets Django's loader registered on it)."""

    timezone = datetime.UTC

    def __init__(self, oid: int, context=None) -> None:
        super().__init__(oid, context)
        # Called by psycopg once per value: the driver's own bound method, no Python frame.
        self.load = _DRIVER_LOADER(oid, context).load

    def load(self, data):  # the abstract method; the instance's attribute above shadows it
        return self.load(data)


def timestamps_fast(connection) -> bool:
    """Load timestamptz values with psycopg's loader on this Django connection if it gives
    what Django's would (both time zones UTC). Whether it does so now."""
    if connection.vendor != "postgresql" or connection.timezone is not datetime.UTC:
        return False
    pg = connection.connection
    if pg is None or pg.info.timezone is not datetime.UTC:
        return False
    pg.adapters.register_loader(TIMESTAMPTZ_OID, UtcTimestamptzLoader)
    return True


def on_connection_created(sender, connection, **kwargs) -> None:
    timestamps_fast(connection)
