"""Model instances from a hand-written query, for the statements every run executes.

The ORM compiles a queryset's SQL afresh on every call, and a RawQuerySet maps its columns
anew on every call too; on the hot path that work costs more CPU than the query itself. A
query whose SQL is built once (from the model's own table and column names) is executed here
and its rows become instances with Model.from_db -- what a queryset does per row -- with the
fields' own conversions of database values (JSON).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence

from django.db import connection


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
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [row_instance(model, row) for row in cursor.fetchall()]


def json_object(value) -> dict:
    """A JSON column of a hand-written query (text, as Django has psycopg load jsonb) as a
    dict; SQL NULL (an aggregate over no rows) as an empty one."""
    return (json.loads(value) if isinstance(value, str) else value) or {}
