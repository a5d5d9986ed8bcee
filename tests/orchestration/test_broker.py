"""The Redis broker transport (orchestration/broker.py): kombu's, one client per channel."""

from __future__ import annotations

import json

import pytest
import redis
from celery import signals
from django.conf import settings

from config.celery import app
from orchestration import broker, sending
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


# --- execute_run_send (orchestration/sending.py) ------------------------------------------


def _queued(client, queue) -> list[dict]:
    """The queue's messages, oldest first."""
    return [json.loads(raw) for raw in reversed(client.lrange(queue, 0, -1))]


def _without_ids(message: dict) -> dict:
    """A message with what is new in every message (its ids, its delivery tag) taken out."""
    message = json.loads(json.dumps(message))
    for name in ("id", "root_id"):
        message["headers"].pop(name)
    for name in ("correlation_id", "delivery_tag"):
        message["properties"].pop(name)
    return message


@pytest.mark.parametrize("limits", [{}, {"soft_time_limit": 40, "time_limit": 60.5}])
def test_execute_run_send_puts_the_message_apply_async_puts(limits):
    queue = private_queue()
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    try:
        execute_run.apply_async(args=["run-1"], queue=queue, **limits)
        sending.execute_run_send("run-1", queue=queue, **limits)
        celery_sent, sent = _queued(client, queue)
        assert _without_ids(sent) == _without_ids(celery_sent)
        assert sent["headers"]["id"] == sent["properties"]["correlation_id"]
        assert sent["headers"]["root_id"] == sent["headers"]["id"]
        assert sent["headers"]["id"] != celery_sent["headers"]["id"]
        assert sent["headers"]["timelimit"] == [
            limits.get("time_limit"),
            limits.get("soft_time_limit"),
        ]
    finally:
        client.delete(queue)


def test_execute_run_send_leaves_what_it_cannot_do_as_quickly_to_apply_async():
    """A receiver of Celery's publish signals hears the message: apply_async sent it."""
    queue = private_queue()
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    heard = []

    def receiver(sender=None, headers=None, **kwargs):
        heard.append((sender, headers["argsrepr"]))

    try:
        signals.before_task_publish.connect(receiver)
        try:
            sending.execute_run_send("run-2", queue=queue)
            assert heard == [("orchestration.execute_run", "['run-2']")]
        finally:
            signals.before_task_publish.disconnect(receiver)
        heard.clear()
        sending.execute_run_send("run-3", queue=queue)  # the quick path again: nobody hears it
        assert heard == []
        queued = [m["headers"]["argsrepr"] for m in _queued(client, queue)]
        assert queued == ["['run-2']", "['run-3']"]
    finally:
        client.delete(queue)


def test_execute_run_send_falls_back_to_apply_async_when_the_quick_send_fails(monkeypatch):
    queue = private_queue()
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)

    def refuse(self, task_message, *, queue):
        raise redis.ConnectionError("refused")

    monkeypatch.setattr(broker.Channel, "task_message_put", refuse)
    try:
        sending.execute_run_send("run-4", queue=queue)
        (message,) = _queued(client, queue)
        assert message["headers"]["argsrepr"] == "['run-4']"
    finally:
        client.delete(queue)


def test_the_transport_does_not_emulate_acknowledgements():
    """Delivered messages are not copied into kombu's unacked hash: a run's row, not the
    broker, is what brings back work a dead worker held (the reaper)."""
    from kombu.transport import virtual

    with app.connection_for_write() as connection:
        channel = connection.default_channel
        assert channel.ack_emulation is False
        assert channel.QoS is virtual.QoS


def test_the_transport_option_turns_the_emulation_back_on():
    from kombu import Connection
    from kombu.transport import redis as kombu_redis

    url = settings.CELERY_BROKER_URL
    options = {"ack_emulation": True}
    with Connection(url, transport=broker.Transport, transport_options=options) as connection:
        channel = connection.default_channel
        assert channel.ack_emulation is True
        assert channel.QoS is kombu_redis.QoS
