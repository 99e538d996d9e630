"""Open a subscription's streams, tag their events, and merge them into SSE frames.

Each selected stream becomes one source: an async generator yielding `(index, position,
body)` where `body` is the encoded `event:` + `data:` part and `position` the stream's new
position (None for a control event, which moves no position). aiostream's `merge` runs the
sources concurrently; `frames()` consumes it inside `async with ....stream()`, so leaving the
loop for any reason (end, error, client gone, cancellation) closes every source and with it
every plugin generator, whose `finally` blocks run.

A source that raises ends with a `hub.error` control event; the others go on. The merged
stream ends when every source has ended.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from aiostream import stream as ops

from .cursor import CursorWriter
from .events import control_body, encode_body, encode_frame
from .subscription import Selected, Subscription

__all__ = ["Activity", "frames"]

logger = logging.getLogger("hub")

Tagged = tuple[int, str | None, bytes]


@dataclass
class Activity:
    """Live counts, for /health and for leak checks."""

    subscriptions: int = 0
    open_streams: int = 0


async def frames(
    subscription: Subscription, activity: Activity | None = None
) -> AsyncIterator[bytes]:
    """The SSE frames of a subscription: each event with the cursor after it as its id."""
    activity = activity if activity is not None else Activity()
    writer = CursorWriter(subscription.names, subscription.start)
    turns = Turns(len(subscription.selected))
    sources = [
        _taking_turns(_generated(index, s, activity), turns)
        for index, s in enumerate(subscription.selected)
    ]
    activity.subscriptions += 1
    try:
        async with ops.merge(*sources).stream() as items:
            async for index, position, body in items:
                if position is None:
                    yield body
                else:
                    yield encode_frame(body, writer.advance(index, position))
    finally:
        activity.subscriptions -= 1


class Turns:
    """Hands the right to deliver an event to one ready source at a time, oldest first.

    aiostream's merge takes the first ready source in selection order and only starts the
    next source when none is ready. A source that is ready again at once (a generator that
    never awaits, such as echo with interval=0) would then starve its siblings, the ones not
    yet started among them. So every source waits until all have started, and a source with
    an event may yield it only when it holds the turn; the turn passes, in the order sources
    became ready, when the consumer comes back for the next event. Uncontended, it costs no
    await at all.
    """

    def __init__(self, sources: int) -> None:
        self._unstarted = sources
        self._all_started = asyncio.Event()
        self._held = False
        self._waiting: deque[asyncio.Future[None]] = deque()

    async def started(self) -> None:
        self._unstarted -= 1
        if self._unstarted <= 0:
            self._all_started.set()
            # Let the sources that waited go first, so that events ready at the same moment
            # come out in selection order.
            await asyncio.sleep(0)
        await self._all_started.wait()

    async def acquire(self) -> None:
        if not self._held:
            self._held = True
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled():
                self.release()  # granted as we were cancelled: pass it on
            elif turn in self._waiting:
                self._waiting.remove(turn)
            raise

    def release(self) -> None:
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._held = False


async def _taking_turns(
    source: AsyncGenerator[Tagged, None], turns: Turns
) -> AsyncGenerator[Tagged, None]:
    await turns.started()
    async with aclosing(source) as items:
        async for item in items:
            await turns.acquire()
            try:
                yield item
            finally:
                turns.release()


async def _generated(
    index: int, selected: Selected, activity: Activity
) -> AsyncGenerator[Tagged, None]:
    definition = selected.stream
    name, model = definition.name, definition.event_model
    position = selected.after
    if selected.count == 0:
        return
    delivered = 0
    activity.open_streams += 1
    try:
        async with aclosing(definition.open(selected.arguments, position)) as events:
            async for event in events:
                if not isinstance(event, model):
                    raise TypeError(
                        f"stream {name!r} yielded {type(event).__name__}, expected {model.__name__}"
                    )
                position = 0 if position is None else position + 1
                yield index, str(position), encode_body(name, event.model_dump_json())
                delivered += 1
                if delivered == selected.count:
                    return
    except Exception as exc:
        logger.exception("stream %r failed; its subscriber's other streams go on", name)
        yield index, None, control_body("error", stream=name, error=f"{type(exc).__name__}: {exc}")
    finally:
        activity.open_streams -= 1
