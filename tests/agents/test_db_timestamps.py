"""agents.db: timestamptz values load through psycopg's compiled loader and equal Django's.

Each value is read twice from the real server: through the connection as the application
has it, and through a cursor with Django's own loader registered on it, as Django would
read it without agents.db.
"""

from __future__ import annotations

import datetime

import psycopg
import pytest
from django.db import DataError, connection, connections
from django.db.backends.postgresql.psycopg_any import BaseTzLoader, register_tzloader
from django.test import override_settings
from psycopg.pq import Format

from agents.db import TIMESTAMPTZ_OID, UtcTimestamptzLoader, timestamps_fast
from runs.models import AgentRun
from tests.factories import RunFactory

pytestmark = pytest.mark.django_db

INSTANTS = """
    SELECT t FROM (VALUES
        (now()),
        ('2026-06-30 23:59:59.999999-07'::timestamptz),
        ('2000-02-29 12:00:00.5+05:30'),
        ('1970-01-01 00:00:00+00'),
        ('0001-01-01 00:00:00+00'),
        ('9999-12-31 23:59:59.999999+00'),
        (NULL)
    ) AS v(t)
    UNION ALL
    SELECT generate_series('1890-01-01'::timestamptz, '2110-01-01',
                           '3 days 7 hours 13 minutes 1.234567 seconds')
"""


def _read(sql: str, djangos_loader: bool) -> list:
    with connection.cursor() as cursor:
        if djangos_loader:
            register_tzloader(connection.timezone, cursor.cursor)
        cursor.execute(sql)
        return [row[0] for row in cursor.fetchall()]


def test_the_applications_connections_load_timestamps_with_the_driver():
    connection.ensure_connection()

    loader = connection.connection.adapters.get_loader(TIMESTAMPTZ_OID, Format.TEXT)

    assert loader is UtcTimestamptzLoader
    # The driver's compiled loader does the work (psycopg[binary] is a dependency).
    does_the_work = type(loader(TIMESTAMPTZ_OID, connection.connection).load.__self__)
    assert does_the_work is psycopg.adapters.get_loader(TIMESTAMPTZ_OID, Format.TEXT)
    assert does_the_work.__module__ == "psycopg_binary._psycopg"


def test_every_value_equals_what_djangos_loader_gives():
    ours = _read(INSTANTS, djangos_loader=False)
    djangos = _read(INSTANTS, djangos_loader=True)

    assert len(ours) > 20_000
    assert ours == djangos
    assert all(
        (a is None and b is None) or (a.tzinfo is datetime.UTC and b.tzinfo is datetime.UTC)
        for a, b in zip(ours, djangos, strict=True)
    )


@pytest.mark.parametrize("literal", ["infinity", "-infinity"])
def test_values_python_cannot_hold_fail_as_with_djangos_loader(literal):
    sql = f"SELECT '{literal}'::timestamptz"
    for djangos_loader in (False, True):
        with pytest.raises(DataError, match="timestamp too"):
            _read(sql, djangos_loader=djangos_loader)


def test_a_run_reads_back_the_instants_it_was_written_with():
    started = datetime.datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=datetime.UTC)
    run = RunFactory(started_at=started)

    again = AgentRun.objects.get(pk=run.pk)

    assert again.started_at == started and again.started_at.tzinfo is datetime.UTC
    assert again.created_at == run.created_at


@pytest.fixture
def second_connection():
    wrapper = connections.create_connection("default")
    yield wrapper
    wrapper.close()


def test_a_session_in_another_time_zone_keeps_djangos_loader(second_connection):
    second_connection.ensure_connection()
    pg = second_connection.connection
    with pg.cursor() as cursor:
        cursor.execute("SET TIME ZONE 'Europe/Paris'")
    register_tzloader(second_connection.timezone, pg)  # as Django left it

    assert timestamps_fast(second_connection) is False
    assert issubclass(pg.adapters.get_loader(TIMESTAMPTZ_OID, Format.TEXT), BaseTzLoader)


def test_without_use_tz_djangos_loader_stays(second_connection):
    with override_settings(USE_TZ=False):
        second_connection.ensure_connection()
        pg = second_connection.connection

        assert timestamps_fast(second_connection) is False
        assert issubclass(pg.adapters.get_loader(TIMESTAMPTZ_OID, Format.TEXT), BaseTzLoader)
