import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('agents', '0001_initial'),
        ('runs', '0005_run_org_created_id_index'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        # Only the foreign keys' own indexes are dropped: an AlterField would also drop
        # and re-add (and so re-validate, over the whole table) each foreign key constraint.
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    'DROP INDEX IF EXISTS "agent_runs_agent_id_589c2d4b"',
                    reverse_sql='CREATE INDEX "agent_runs_agent_id_589c2d4b" ON "agent_runs" ("agent_id")',
                ),
                migrations.RunSQL(
                    'DROP INDEX IF EXISTS "agent_runs_dataset_id_b1fad137"',
                    reverse_sql='CREATE INDEX "agent_runs_dataset_id_b1fad137" ON "agent_runs" ("dataset_id")',
                ),
                migrations.RunSQL(
                    'DROP INDEX IF EXISTS "agent_runs_organization_id_d9ca4973"',
                    reverse_sql='CREATE INDEX "agent_runs_organization_id_d9ca4973" ON "agent_runs" ("organization_id")',
                ),
                migrations.RunSQL(
                    'DROP INDEX IF EXISTS "agent_runs_retry_of_id_bfa19157"',
                    reverse_sql='CREATE INDEX "agent_runs_retry_of_id_bfa19157" ON "agent_runs" ("retry_of_id")',
                ),
                migrations.RunSQL(
                    'DROP INDEX IF EXISTS "agent_runs_user_id_c961ab73"',
                    reverse_sql='CREATE INDEX "agent_runs_user_id_c961ab73" ON "agent_runs" ("user_id")',
                ),
            ],
            state_operations=[
                migrations.AlterField(
                    model_name='agentrun',
                    name='agent',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='runs', to='agents.agent'),
                ),
                migrations.AlterField(
                    model_name='agentrun',
                    name='dataset',
                    field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='runs', to='agents.dataset'),
                ),
                migrations.AlterField(
                    model_name='agentrun',
                    name='organization',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='runs', to='agents.organization'),
                ),
                migrations.AlterField(
                    model_name='agentrun',
                    name='retry_of',
                    field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='retries', to='runs.agentrun'),
                ),
                migrations.AlterField(
                    model_name='agentrun',
                    name='user',
                    field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='agent_runs', to=settings.AUTH_USER_MODEL),
                ),
            ],
        ),
        migrations.AddIndex(
            model_name='agentrun',
            index=models.Index(condition=models.Q(('dataset__isnull', False)), fields=['dataset'], name='run_dataset_idx'),
        ),
        migrations.AddIndex(
            model_name='agentrun',
            index=models.Index(condition=models.Q(('user__isnull', False)), fields=['user'], name='run_user_idx'),
        ),
        migrations.AddIndex(
            model_name='agentrun',
            index=models.Index(condition=models.Q(('retry_of__isnull', False)), fields=['retry_of'], name='run_retry_of_idx'),
        ),
    ]
