"""The hot path's parameter preparation equals the fields' own get_db_prep_save()."""

from __future__ import annotations

from datetime import datetime

import pytest
from django.db import connection
from psycopg.types.json import Jsonb

from runs import services as run_services
from runs.choices import RunStatus
from runs.models import AgentRun
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db


def _comparable(value):
    # JSON values are wrapped for the driver; the wrappers compare by what they hold.
    return ("json", value.obj) if isinstance(value, Jsonb) else (type(value), value)


def test_every_run_column_is_prepared_as_the_field_prepares_it(tenant_a):
    agent = AgentFactory(organization=tenant_a.organization)
    run = run_services.run_create(
        organization=tenant_a.organization,
        agent=agent,
        intent="nap",
        input={"n": 1, "nested": [1, "two", None]},
        mode="sync",
        meta={"context": {"k": "v"}},
        idempotency_key="key-1",
        claimed_by="node-a",
        lease_seconds=30,
    )
    run.mark_succeeded(output={"ok": True})
    run.metrics = {"durationMs": 3}
    # Values the fast path must hand to the field: a naive datetime, a bool in an integer
    # column, a UUID given as text, a str enum in a text column.
    naive = datetime(2026, 1, 2, 3, 4, 5)
    variants = [run, AgentRun(**{**_values(run), "retry_of_id": str(run.pk)})]
    fields = list(AgentRun._meta.concrete_fields)
    for candidate in variants:
        values = [getattr(candidate, f.attname) for f in fields]
        prepared = run_services.db_prep_values(fields, values, connection)
        expected = [f.get_db_prep_save(v, connection) for f, v in zip(fields, values, strict=True)]
        assert [_comparable(v) for v in prepared] == [_comparable(v) for v in expected]
    odd = {"attempt": True, "status": RunStatus.SUCCESS, "agent": str(agent.pk)}
    for name, value in odd.items():
        field = AgentRun._meta.get_field(name)
        (prepared,) = run_services.db_prep_values([field], [value], connection)
        assert _comparable(prepared) == _comparable(field.get_db_prep_save(value, connection))
    field = AgentRun._meta.get_field("queued_at")
    with pytest.warns(RuntimeWarning, match="naive datetime"):
        expected = field.get_db_prep_save(naive, connection)
    with pytest.warns(RuntimeWarning, match="naive datetime"):
        (prepared,) = run_services.db_prep_values([field], [naive], connection)
    assert _comparable(prepared) == _comparable(expected)


def _values(run: AgentRun) -> dict:
    return {f.attname: getattr(run, f.attname) for f in AgentRun._meta.concrete_fields}


@pytest.mark.parametrize("vendor", ["postgresql", "other"])
def test_run_create_reading_inserts_and_reads_on_every_backend(
    tenant_a, monkeypatch, django_assert_num_queries, vendor
):
    """On PostgreSQL the SELECT rides in the INSERT's statement; on another backend (the
    ORM's save, then the SELECT on its own) the caller gets the same run and rows."""
    agent = AgentFactory(organization=tenant_a.organization)
    if vendor != "postgresql":
        monkeypatch.setattr(connection, "vendor", vendor)
    read_after = ("SELECT %s::int, %s::text", [7, "seven"])
    with django_assert_num_queries(1 if vendor == "postgresql" else 2):
        run, rows = run_services.run_create_reading(
            read_after,
            organization=tenant_a.organization,
            agent=agent,
            intent="nap",
            input={"n": 1},
            mode="async",
        )
    assert [tuple(row) for row in rows] == [(7, "seven")]
    stored = AgentRun.objects.get(pk=run.pk)
    assert (stored.status, stored.intent, stored.input) == (RunStatus.PENDING, "nap", {"n": 1})
    assert not run._state.adding
