"""One live subscription per process, fanned out to every event stream it serves.

An ASGI process keeps a single Redis SUBSCRIBE on the bus's channel however many
clients are streaming: each stream is a Subscriber with a bounded queue, so an idle
client costs a queue and a coroutine -- no Redis connection, no database connection.

Whatever may have been missed is signalled with RESYNC: the hub lost Redis and came
back, or a slow client's queue overflowed. The stream then catches up from the
database, which is the source of truth.

Embedded mode (no REDIS_URL) has no channel: the hub hears the events committed in its
own process (bus.local_listen) and streams poll the database for the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref

import redis.asyncio as aioredis
from django.conf import settings

from orchestration.bus import local_listen, local_unlisten

logger = logging.getLogger(__name__)

RESYNC = object()  # queued when live delivery may have had a gap
QUEUE_SIZE = 1000
# A connection to Redis that died without a FIN is noticed by the periodic PING.
HEALTH_CHECK_S = 15
SUBSCRIBE_TIMEOUT_S = 5.0


class Subscriber:
    def __init__(self, maxsize: int = QUEUE_SIZE) -> None:
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)

    def offer(self, item) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            # A client that reads slower than events arrive: forget what is queued and
            # let it catch up from the database instead of growing without bound.
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(RESYNC)


class Hub:
    """The subscription of one event loop (uvicorn runs one loop per process)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.embedded = not settings.REDIS_URL
        self.subscribers: set[Subscriber] = set()
        self.connected = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._listening = False

    @property
    def live(self) -> bool:
        """Whether every event of every process reaches the subscribers without polling."""
        return not self.embedded and self.connected.is_set()

    async def attach(self, subscriber: Subscriber, *, timeout: float = 2.0) -> bool:
        """Add a subscriber; True once live delivery to it is assured from now on.

        A stream catches up from the database only after this returns, so an event
        committed in between reaches it live, and it drops what it already has.
        """
        self.subscribers.add(subscriber)
        if self.embedded:
            if not self._listening:
                local_listen(self._local_event)
                self._listening = True
            return False
        if self._task is None or self._task.done():
            self._task = self.loop.create_task(self._run(), name="event-hub")
        try:
            await asyncio.wait_for(self.connected.wait(), timeout)
        except TimeoutError:
            logger.warning("event hub: Redis not subscribed within %ss; streams poll", timeout)
            return False
        return True

    def detach(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)
        if self.subscribers:
            return
        if self._listening:
            local_unlisten(self._local_event)
            self._listening = False
        if self._task is not None:
            self._task.cancel()
            self._task = None
            self.connected.clear()

    def _dispatch(self, item) -> None:
        for subscriber in list(self.subscribers):
            subscriber.offer(item)

    def _local_event(self, wire: dict) -> None:
        # Called in whichever thread committed the event.
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody listens any more
            self.loop.call_soon_threadsafe(self._dispatch, wire)

    async def _run(self) -> None:
        backoff = 0.5
        reconnect = False
        while True:
            client = aioredis.Redis.from_url(
                settings.REDIS_URL,
                socket_connect_timeout=2,
                socket_keepalive=True,
                health_check_interval=HEALTH_CHECK_S,
            )
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(settings.EVENTS_CHANNEL)
                # SUBSCRIBE is in force once Redis confirms it, not once it is sent.
                deadline = time.monotonic() + SUBSCRIBE_TIMEOUT_S
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "subscribe":
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError("SUBSCRIBE not confirmed")
                self.connected.set()
                backoff = 0.5
                if reconnect:
                    self._dispatch(RESYNC)
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=HEALTH_CHECK_S
                    )
                    if message is None or message["type"] != "message":
                        continue
                    try:
                        wire = json.loads(message["data"])
                    except (TypeError, ValueError):
                        logger.warning(
                            "event hub: undecodable message on %s", settings.EVENTS_CHANNEL
                        )
                        continue
                    self._dispatch(wire)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("event hub: Redis subscription lost (%s); retrying", exc)
                self.connected.clear()
                self._dispatch(RESYNC)
            finally:
                try:
                    await pubsub.aclose()
                    await client.aclose()
                except Exception:  # closing a broken connection may fail too
                    logger.debug("event hub: error while closing", exc_info=True)
            reconnect = True
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def hub_current() -> Hub:
    """The hub of the running event loop (connections cannot cross event loops)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = Hub(loop)
    return hub
