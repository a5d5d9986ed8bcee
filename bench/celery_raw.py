"""B2 / B3 baselines on plain Celery: a no-op task with django-celery-results, and B2's floor.

The same configuration as the project's workers (Django settings, Redis broker, the
django-db result backend, acks_late, prefetch 1) and nothing of ours on the path:
- ``noop`` returns None and Celery stores its result row;
- ``record_finish`` is the least a recorded run needs (B2's "floor"): its submitter commits
  a PENDING row before it sends the task (FLOOR_INSERT), the task ends the row with one
  UPDATE by primary key (FLOOR_FINISH) and stores no result -- the row is the record. No
  rate limit, no claim, no metrics, tool calls or event.
Started by bench.async_runs as ``celery -A bench.celery_raw worker``.
"""

from __future__ import annotations

import os

from celery import Celery
from django.db import connection

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("bench_raw")
app.config_from_object("django.conf:settings", namespace="CELERY")
# The baseline stores every result (that is what django-celery-results is for).
app.conf.task_ignore_result = False
# kombu's own Redis transport, not the project's (orchestration/broker.py).
app.conf.broker_transport = None


@app.task(name="bench.noop")
def noop() -> None:
    return None


# B2's floor: the table, shaped as B1's pgbench run record, with the partial index that
# lets the benchmark count the batch's pending rows without reading the ended ones.
FLOOR_TABLE = "bench_floor_runs"
FLOOR_SETUP = f"""
CREATE TABLE IF NOT EXISTS {FLOOR_TABLE} (id bigserial PRIMARY KEY, status text, intent text,
  input jsonb, output jsonb, created_at timestamptz DEFAULT now(), completed_at timestamptz);
CREATE INDEX IF NOT EXISTS {FLOOR_TABLE}_pending ON {FLOOR_TABLE} (created_at)
  WHERE status = 'PENDING';
"""
FLOOR_INSERT = (
    f"INSERT INTO {FLOOR_TABLE} (status, intent, input)"  # noqa: S608  (constants only)
    " VALUES ('PENDING', 'bench', %s) RETURNING id"
)
FLOOR_FINISH = (
    f"UPDATE {FLOOR_TABLE} SET status = 'SUCCESS', output = %s,"  # noqa: S608  (constants only)
    " completed_at = now() WHERE id = %s"
)


@app.task(name="bench.record_finish", ignore_result=True)
def record_finish(row_id: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute(FLOOR_FINISH, ['{"ok": true}', row_id])
