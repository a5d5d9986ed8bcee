"""B2 / B3 baseline: a no-op task on plain Celery with django-celery-results.

The same configuration as the project's workers (Django settings, Redis broker, the
django-db result backend, acks_late, prefetch 1) and nothing of ours on the path: the task
returns None and Celery stores its result row. Started by bench.async_runs as
``celery -A bench.celery_raw worker``.
"""

from __future__ import annotations

import os

from celery import Celery

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
