"""tool_executions loses its index on run_id alone: the unique (run_id, tool_id, call_id)
index starts with run_id and serves the same lookups, so every tool call wrote one index
entry for nothing.

Only the index is dropped. Django's own AlterField would also drop and re-add the foreign
key, which re-validates every row of the table under lock; the constraint is unchanged.
"""

import django.db.models.deletion
from django.db import migrations, models

# Django's name for the index of tool_executions.run_id (the same on every backend).
INDEX = "tool_executions_run_id_d6870f4b"


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0006_fewer_run_indexes"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    f"DROP INDEX IF EXISTS {INDEX}",
                    reverse_sql=f"CREATE INDEX IF NOT EXISTS {INDEX} ON tool_executions (run_id)",
                ),
            ],
            state_operations=[
                migrations.AlterField(
                    model_name="toolexecution",
                    name="run",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="tool_executions",
                        to="runs.agentrun",
                    ),
                ),
            ],
        ),
    ]
