"""agent_runs carries the indexes its model declares and no other: every one of them is
written by each run's insert, claim and finish, so an index is a per-run cost."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.models import UniqueConstraint

from runs.models import AgentRun

pytestmark = pytest.mark.django_db


def _indexes(table: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", [table])
        return {row[0] for row in cursor.fetchall()}


def test_agent_runs_has_exactly_the_declared_indexes_and_no_foreign_key_index_of_its_own():
    declared = {index.name for index in AgentRun._meta.indexes}
    declared |= {c.name for c in AgentRun._meta.constraints if isinstance(c, UniqueConstraint)}
    assert _indexes("agent_runs") == declared | {"agent_runs_pkey"}


@pytest.mark.parametrize(
    ("column", "index"),
    [
        ("organization_id", "run_org"),  # a composite index led by the organization
        ("agent_id", "run_agent_"),
        ("user_id", "run_user_idx"),
        ("dataset_id", "run_dataset_idx"),
        ("retry_of_id", "run_retry_of_idx"),
    ],
)
def test_every_reference_is_looked_up_through_an_index(column, index):
    # What a cascade or SET NULL on delete runs; forced off the sequential scan a table
    # this small would otherwise get.
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(
            f"EXPLAIN SELECT id FROM agent_runs WHERE {column} = %s",  # noqa: S608
            ["00000000-0000-0000-0000-000000000000" if column != "user_id" else 1],
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert index in plan, plan
