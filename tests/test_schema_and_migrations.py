from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.db import connection

EXPECTED_TABLES = {
    "organizations",
    "organization_members",
    "api_keys",
    "agents",
    "agent_capabilities",
    "agent_configs",
    "tools",
    "datasets",
    "agent_runs",
    "agent_run_metrics",
    "tool_executions",
    "run_steps",
    "agent_jobs",
    "orchestrator_nodes",
    "orchestrator_events",
    "orchestrator_config_revisions",
}


@pytest.mark.django_db
def test_database_holds_every_table_of_the_data_model():
    assert connection.vendor == "postgresql"
    tables = set(connection.introspection.table_names())
    assert EXPECTED_TABLES <= tables


@pytest.mark.django_db
def test_no_model_change_lacks_a_migration():
    out = io.StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_migrations_apply_from_zero_and_back():
    call_command("migrate", "agents", "zero", verbosity=0)
    remaining = set(connection.introspection.table_names())
    assert not (EXPECTED_TABLES & remaining)
    call_command("migrate", verbosity=0)
    assert EXPECTED_TABLES <= set(connection.introspection.table_names())


def test_openapi_schema_validates_without_warnings(tmp_path):
    target = tmp_path / "schema.yml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))
    text = target.read_text()
    assert "/api/runs/" in text
    assert "/api/agents/" in text
