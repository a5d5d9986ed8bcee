"""The Celery broker transport for a Redis broker: kombu's, with three changes.

- One client per channel. kombu's Redis channel builds a new ``redis.Redis`` object around
  its connection pool for every command it sends outside a worker's event loop -- every
  publish: a run's submission paid for that object (its option dicts, its event
  dispatcher) on every send, more CPU than the LPUSH itself. This channel builds it once
  and keeps it while the channel's pool is the same (kombu drops the pool after a fork or
  a disconnection, and the client goes with it). A ``redis.Redis`` only borrows a
  connection from the pool per command, so one object serves every thread.
- No acknowledgement emulation. kombu's Redis transport copies every message it delivers
  into an "unacked" hash and deletes it again on the acknowledgement (two round trips to
  Redis per message in the worker's main process, between a pool process finishing one run
  and starting the next), so that a message a dead worker held comes back after the
  visibility timeout (an hour by default). A run does not need it: its row is the record
  of the work, committed PENDING before the message is sent, and the reaper re-enqueues a
  PENDING run nobody claimed within ``nodes.pending_timeout_s`` and takes back a RUNNING one
  whose lease ran out (docs/RUNS.md, "Delivery"). Messages a worker holds are still put back
  when it shuts down (kombu's in-memory QoS restores them) and when a pool process dies
  under a task (reject_on_worker_lost). ``broker_transport_options={"ack_emulation": True}``
  turns the emulation back on.
- ``task_message_put``: a Celery task message put on its queue with one LPUSH
  (orchestration.sending, for execute_run), without the producer's per-message declaration
  of the queue.

The messages, the queues, the worker's consumption (its asynchronous client) are kombu's
own. settings.CELERY_BROKER_TRANSPORT names this transport when CELERY_BROKER_URL is a
``redis://`` URL; any other broker keeps its own transport.
"""

from __future__ import annotations

from kombu.serialization import dumps
from kombu.transport import redis as kombu_redis

# kombu's persistent delivery mode (Producer.publish's default for a durable exchange).
PERSISTENT_DELIVERY_MODE = 2


class Channel(kombu_redis.Channel):
    ack_emulation = False
    _sync_client = None

    def _create_client(self, asynchronous=False):
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()
        return client

    def _disconnect_pools(self):
        self._sync_client = None
        super()._disconnect_pools()

    def task_message_put(self, task_message, *, queue: str) -> None:
        """Put a Celery task message (``app.amqp.as_task_v2``'s) on ``queue``.

        The envelope is the one kombu's Producer.publish writes (kombu's own
        prepare_message and _inplace_augment_message build it, JSON body, persistent
        delivery mode), addressed as Celery addresses a task to a queue behind a direct
        exchange: to the anonymous exchange, with the queue's name as the routing key. So
        the message goes straight to that list, in one LPUSH, without the producer's
        declaration of the queue on every message (the sender checks the route is such a
        queue; orchestration.sending)."""
        headers, properties, body, _ = task_message
        content_type, content_encoding, data = dumps(body, serializer="json")
        message = self.prepare_message(
            data,
            None,
            content_type,
            content_encoding,
            headers,
            {**properties, "delivery_mode": PERSISTENT_DELIVERY_MODE},
        )
        self._inplace_augment_message(message, "", queue)
        self._put(queue, message)


class Transport(kombu_redis.Transport):
    Channel = Channel
