"""The Celery broker transport for a Redis broker: kombu's, keeping one client per channel.

kombu's Redis channel builds a new ``redis.Redis`` object around its connection pool for
every command it sends outside a worker's event loop -- every publish: a run's submission
paid for that object (its option dicts, its event dispatcher) on every send, more CPU than
the LPUSH itself. This channel builds it once and keeps it while the channel's pool is the
same (kombu drops the pool after a fork or a disconnection, and the client goes with it).
A ``redis.Redis`` only borrows a connection from the pool per command, so one object
serves every thread. Nothing else changes: the messages, the queues, the worker's
consumption (its asynchronous client) are kombu's own.

settings.CELERY_BROKER_TRANSPORT names this transport when CELERY_BROKER_URL is a
``redis://`` URL; any other broker keeps its own transport.
"""

from __future__ import annotations

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
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


class Transport(kombu_redis.Transport):
    Channel = Channel
