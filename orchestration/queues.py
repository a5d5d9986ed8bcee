"""Celery queue names: each worker consumes its own node queue, its region's and the default."""

from __future__ import annotations

from django.conf import settings


def node_queue(node_id: str) -> str:
    return f"node.{node_id}"


def region_queue(region: str) -> str:
    return f"region.{region}"


def default_queue() -> str:
    return settings.RUN_DEFAULT_QUEUE
