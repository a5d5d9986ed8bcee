import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('agents', '0001_initial'),
        ('orchestration', '0001_initial'),
    ]

    operations = [
        # Only the foreign keys' own indexes are dropped: an AlterField would also drop
        # and re-add (and so re-validate, over the whole table) each foreign key constraint.
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    'DROP INDEX IF EXISTS "orchestrator_events_organization_id_4c5085e1"',
                    reverse_sql='CREATE INDEX "orchestrator_events_organization_id_4c5085e1" ON "orchestrator_events" ("organization_id")',
                ),
            ],
            state_operations=[
                migrations.AlterField(
                    model_name='orchestratorevent',
                    name='organization',
                    field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='events', to='agents.organization'),
                ),
            ],
        ),
    ]
