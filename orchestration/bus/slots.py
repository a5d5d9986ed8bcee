"""How many event streams one caller may hold open at once (SSE_MAX_CONNECTIONS_PER_KEY).

A slot is a member of a Redis sorted set per caller, scored by when it expires: a
stream refreshes its slot with every heartbeat and frees it when it ends. A process
that dies without freeing its slots leaks nothing for long -- they expire after a
few missed heartbeats -- which a plain INCR/DECR counter could not promise.

Embedded mode (no REDIS_URL) keeps the same bookkeeping in this process.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
import weakref

import redis.asyncio as aioredis
from django.conf import settings

logger = logging.getLogger(__name__)

KEY_PREFIX = "acp:sse:slots:"

# KEYS[1] the caller's slot set; ARGV: slot id, cap, lifetime in seconds.
# Redis's clock, not the API hosts': their clocks may disagree.
_ACQUIRE = """
local now = redis.call('TIME')
local now_s = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_s)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now_s + tonumber(ARGV[3]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + 1)
return 1
"""
_REFRESH = """
local now = redis.call('TIME')
local now_s = tonumber(now[1]) + tonumber(now[2]) / 1000000
if redis.call('ZADD', KEYS[1], 'XX', 'CH', now_s + tonumber(ARGV[2]), ARGV[1]) == 1 then
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 1)
end
return 1
"""


def slot_lifetime_s() -> float:
    # Two missed heartbeats and a margin: a live stream never loses its slot.
    return 2 * settings.SSE_HEARTBEAT_S + 10


class Slot:
    def __init__(self, owner: StreamSlots, key: str) -> None:
        self.owner = owner
        self.key = key
        self.id = uuid.uuid4().hex

    async def refresh(self) -> None:
        await self.owner.refresh(self)

    async def release(self) -> None:
        await self.owner.release(self)


class StreamSlots:
    """Redis-backed slots, shared by every API process."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._acquire = client.register_script(_ACQUIRE)
        self._refresh = client.register_script(_REFRESH)

    async def acquire(self, key: str, cap: int) -> Slot | None:
        slot = Slot(self, key)
        try:
            granted = await self._acquire(
                keys=[KEY_PREFIX + key], args=[slot.id, cap, slot_lifetime_s()]
            )
        except Exception as exc:
            # Streams degrade to polling without Redis; refusing them too would add an
            # outage to an outage. The cap is a guard against runaway clients, not a quota.
            logger.warning("stream slots unavailable (%s): stream admitted uncounted", exc)
            return slot
        return slot if granted else None

    async def refresh(self, slot: Slot) -> None:
        try:
            await self._refresh(keys=[KEY_PREFIX + slot.key], args=[slot.id, slot_lifetime_s()])
        except Exception as exc:
            logger.warning("stream slot %s not refreshed: %s", slot.id, exc)

    async def release(self, slot: Slot) -> None:
        try:
            await self.client.zrem(KEY_PREFIX + slot.key, slot.id)
        except Exception as exc:  # it expires on its own
            logger.warning("stream slot %s not released: %s", slot.id, exc)


class LocalStreamSlots:
    """Embedded mode: the same slots in this process's memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[str, dict[str, float]] = {}

    async def acquire(self, key: str, cap: int) -> Slot | None:
        slot = Slot(self, key)
        now = time.monotonic()
        with self._lock:
            held = {
                slot_id: expires
                for slot_id, expires in self._slots.get(key, {}).items()
                if expires > now
            }
            if len(held) >= cap:
                self._slots[key] = held
                return None
            held[slot.id] = now + slot_lifetime_s()
            self._slots[key] = held
        return slot

    async def refresh(self, slot: Slot) -> None:
        with self._lock:
            held = self._slots.get(slot.key, {})
            if slot.id in held:
                held[slot.id] = time.monotonic() + slot_lifetime_s()

    async def release(self, slot: Slot) -> None:
        with self._lock:
            held = self._slots.get(slot.key, {})
            held.pop(slot.id, None)
            if not held:
                self._slots.pop(slot.key, None)


_local = LocalStreamSlots()
_redis_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, StreamSlots] = (
    weakref.WeakKeyDictionary()
)


def stream_slots() -> StreamSlots | LocalStreamSlots:
    """The slots of this deployment; Redis clients are bound to the running event loop."""
    if not settings.REDIS_URL:
        return _local
    loop = asyncio.get_running_loop()
    slots = _redis_slots.get(loop)
    if slots is None:
        client = aioredis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=1.0, socket_connect_timeout=1.0
        )
        slots = _redis_slots[loop] = StreamSlots(client)
    return slots
