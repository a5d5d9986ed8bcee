"""Model instances from a hand-written query, for the statements every run executes.

The ORM compiles a queryset's SQL afresh on every call, and a RawQuerySet maps its columns
anew on every call too; on the hot path that work costs more CPU than the query itself. A
query whose SQL is built once (from the model's own table and column names) is executed here
and its rows become instances with Model.from_db -- what a queryset does per row -- with the
fields' own conversions of database values (JSON).

These statements run on a server-side binding cursor (prepared_cursor), so PostgreSQL plans
each of them once per connection instead of on every run: planning cost more server time
than executing them (DATABASE_PREPARE_THRESHOLD, README.md).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence

from django.db import connection

try:
    from django.db.backends.postgresql.base import ServerBindingCursor
except ImportError:  # no psycopg 3 (an embedded-only installation)
    _PreparingCursor = None
else:

    class _PreparingCursor(ServerBindingCursor):
        """Django's server-side binding cursor, which keeps the statement of an execution
        of a prepared statement where Django's query log reads it (psycopg records the
        statement only when it sends its text), so the log and assertNumQueries show it."""

        def _send_query_prepared(self, name, pgq, *, binary=None):
            self._query = pgq
            return super()._send_query_prepared(name, pgq, binary=binary)


def prepared_cursor(conn=None):
    """A cursor of ``conn`` (the default connection) whose statements the server prepares.

    Django's PostgreSQL cursors bind parameters on the client, which never prepares a
    statement; a server-side binding cursor on the same connection has psycopg prepare a
    statement once it ran ``prepare_threshold`` times (settings DATABASE_PREPARE_THRESHOLD),
    so a statement every run executes is planned once per connection. The cursor is Django's
    wrapper around it, like connection.cursor()'s: its statements are logged, counted
    (assertNumQueries) and pass the connection's execute wrappers. Prepared statements off
    (the threshold unset), or not PostgreSQL: connection.cursor().
    """
    conn = conn if conn is not None else connection
    if conn.vendor != "postgresql" or _PreparingCursor is None:
        return conn.cursor()
    conn.ensure_connection()
    if getattr(conn.connection, "prepare_threshold", None) is None:
        return conn.cursor()
    return conn._prepare_cursor(_PreparingCursor(conn.connection))


@functools.cache
def model_columns(model) -> tuple[str, tuple[str, ...], tuple]:
    """(quoted column list, field attnames, (position, field) needing from_db_value)."""
    fields = model._meta.concrete_fields
    columns = ", ".join(f'"{model._meta.db_table}"."{f.column}"' for f in fields)
    names = tuple(f.attname for f in fields)
    converted = tuple((i, f) for i, f in enumerate(fields) if hasattr(f, "from_db_value"))
    return columns, names, converted


def row_instance(model, row: Sequence):
    """An instance of ``model`` from the first len(fields) values of ``row`` (in
    model_columns() order); any further values are the caller's."""
    _, names, converted = model_columns(model)
    values = list(row[: len(names)])
    for i, field in converted:
        values[i] = field.from_db_value(values[i], None, connection)
    return model.from_db(connection.alias, names, values)


def fetch_instances(model, sql: str, params: Sequence) -> list:
    """Execute ``sql`` (selecting model_columns() first) and return the instances."""
    with prepared_cursor() as cursor:
        cursor.execute(sql, params)
        return [row_instance(model, row) for row in cursor.fetchall()]


def json_object(value) -> dict:
    """A JSON column of a hand-written query (text, as Django has psycopg load jsonb) as a
    dict; SQL NULL (an aggregate over no rows) as an empty one."""
    return (json.loads(value) if isinstance(value, str) else value) or {}
