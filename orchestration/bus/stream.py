"""The Server-Sent Events stream of the bus, as an async generator for the ASGI server.

Order of operations, so that nothing falls between the database and the live feed:
1. subscribe (the process's Hub) -- from here on every committed event is queued;
2. catch up from the database for ids after the client's cursor, in a short query
   whose connection is closed at once;
3. stream what the hub delivers, skipping what was already sent.

Ids are taken when a row is inserted but events become visible when their transaction
commits, so an event can arrive after one with a higher id was sent. It is sent too,
but without an ``id:`` line: the client's Last-Event-ID stays at the highest id, so a
reconnect neither repeats it nor skips anything above it.

Without live delivery (embedded mode, or while Redis is unreachable) the stream polls
the database every SSE_POLL_S seconds instead.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async

from orchestration.bus.hub import RESYNC, Subscriber, hub_current
from orchestration.bus.selectors import (
    EventScope,
    connection_released,
    events_latest_id,
    events_wire_after,
)
from orchestration.bus.slots import Slot

CATCH_UP_PAGE = 500
# Sent ids remembered to drop duplicates; older ones fall below the floor.
SENT_MEMORY = 4096
RETRY_MS = 2000


def sse_event(wire: dict, *, with_id: bool = True) -> str:
    data = json.dumps(wire, separators=(",", ":"), default=str)
    head = f"id: {wire['id']}\n" if with_id else ""
    return f"{head}event: {wire['type']}\ndata: {data}\n\n"


class StreamCursor:
    """What this stream has sent: its resume point and the recent ids (no duplicates)."""

    def __init__(self, after: int) -> None:
        self.last = after  # the highest id sent: what the client will resume after
        self.floor = after  # nothing at or below it is sent
        self.sent: set[int] = set()

    def admit(self, wire: dict) -> str | None:
        event_id = int(wire["id"])
        if event_id <= self.floor or event_id in self.sent:
            return None
        self.sent.add(event_id)
        if len(self.sent) > SENT_MEMORY:
            oldest = sorted(self.sent)[: SENT_MEMORY // 2]
            self.sent.difference_update(oldest)
            self.floor = max(self.floor, oldest[-1])
        if event_id > self.last:
            self.last = event_id
            return sse_event(wire)
        return sse_event(wire, with_id=False)  # committed late: see the module docstring


async def event_stream(
    *,
    scope: EventScope,
    after: int | None,
    heartbeat_s: float,
    poll_s: float,
    slot: Slot | None = None,
) -> AsyncIterator[str]:
    """The SSE body. ``after`` None starts at the newest event (only what comes next)."""
    hub = hub_current()
    subscriber = Subscriber()
    page_after = sync_to_async(connection_released(events_wire_after))

    async def missed(cursor: StreamCursor):
        """What the database has after the cursor, page by page."""
        while True:
            backlog = await page_after(scope=scope, after=cursor.last, limit=CATCH_UP_PAGE)
            for wire in backlog:
                chunk = cursor.admit(wire)
                if chunk:
                    yield chunk
            if len(backlog) < CATCH_UP_PAGE:
                return

    try:
        await hub.attach(subscriber)
        # Subscribed: whatever commits from here on reaches the subscriber.
        if after is None:
            after = await sync_to_async(connection_released(events_latest_id))()
        cursor = StreamCursor(after)
        yield f"retry: {RETRY_MS}\n: connected\n\n"
        async for chunk in missed(cursor):
            yield chunk

        loop = asyncio.get_running_loop()
        next_beat = loop.time() + heartbeat_s
        next_poll = loop.time() + poll_s
        while True:
            polling = not hub.live
            deadline = min(next_beat, next_poll) if polling else next_beat
            item = None
            try:
                async with asyncio.timeout_at(deadline):
                    item = await subscriber.queue.get()
            except TimeoutError:
                pass
            if item is RESYNC or (polling and loop.time() >= next_poll):
                async for chunk in missed(cursor):
                    yield chunk
                next_poll = loop.time() + poll_s
            elif item is not None and scope.matches(item):
                chunk = cursor.admit(item)
                if chunk:
                    yield chunk
            if loop.time() >= next_beat:
                yield ": keepalive\n\n"
                next_beat = loop.time() + heartbeat_s
                if slot is not None:
                    await slot.refresh()
    finally:
        hub.detach(subscriber)
        if slot is not None:
            await asyncio.shield(slot.release())
