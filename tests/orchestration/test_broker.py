"""The Redis broker transport (orchestration/broker.py): kombu's, one client per channel."""

from __future__ import annotations

import json

import pytest
import redis
from django.conf import settings

from config.celery import app
from orchestration import broker
from orchestration.tasks import execute_run
from tests.orchestration.workers import private_queue

pytestmark = pytest.mark.skipif(
    not settings.CELERY_BROKER_URL.startswith("redis://"), reason="a Redis broker"
)


def test_a_redis_broker_uses_the_transport_that_keeps_its_client():
    with app.connection_for_write() as connection:
        assert connection.transport_cls == "orchestration.broker:Transport"
        channel = connection.default_channel
        assert isinstance(channel, broker.Channel)
        first = channel._create_client()
        assert channel._create_client() is first
        assert channel._create_client(asynchronous=True) is not first  # kombu's own
        channel._disconnect_pools()  # what kombu does after a fork or a lost connection
        again = channel._create_client()
        assert again is not first and again.connection_pool is channel.pool


def test_messages_sent_through_it_arrive_as_celery_sends_them():
    queue = private_queue()
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    try:
        for n in range(3):
            execute_run.apply_async(args=[f"run-{n}"], queue=queue)
        assert client.llen(queue) == 3
        bodies = [json.loads(raw) for raw in client.lrange(queue, 0, -1)]
        assert {b["headers"]["task"] for b in bodies} == {"orchestration.execute_run"}
        assert sorted(b["headers"]["argsrepr"] for b in bodies) == [
            "['run-0']",
            "['run-1']",
            "['run-2']",
        ]
    finally:
        client.delete(queue)
