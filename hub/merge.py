"""Open a subscription's streams, tag their events, and merge them into SSE frames.

Each selected stream becomes one source, an async generator of `Tagged` items: the stream's
index in the selection, its new position, the encoded `event:` + `data:` body, and, for a
topic, the whole frame as a one-stream subscriber sees it (shared by all of them). A position
of None marks a control event, which moves no position; `END` marks the last frame of the
response. aiostream's `merge` runs the sources concurrently; `frames()` consumes it inside
`async with ....stream()`, so leaving the loop for any reason (end, error, client gone,
cancellation) closes every source and with it every plugin generator and broker subscription.

A source that raises ends with a `hub.error` control event; the others go on. The merged
stream ends when every source has ended.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from aiostream import stream as ops

from .brokers import Interrupted, Overflow
from .cursor import CursorWriter
from .events import control_body, encode_body, encode_frame
from .registry import Stream, Topic
from .subscription import Selected, Subscription

if TYPE_CHECKING:
    from .runtime import Hub

__all__ = ["Activity", "frames"]

logger = logging.getLogger("hub")


class _End:
    def __repr__(self) -> str:
        return "END"


END: Final = _End()

Tagged = tuple[int, str | _End | None, bytes, bytes | None]


@dataclass
class Activity:
    """Live counts, for /health and for leak checks."""

    subscriptions: int = 0
    open_streams: int = 0


async def frames(subscription: Subscription, hub: Hub) -> AsyncGenerator[bytes, None]:
    """The SSE frames of a subscription: each event with the cursor after it as its id."""
    activity = hub.activity
    start = dict(subscription.start)
    for selected in subscription.selected:
        # Without a cursor a topic starts live; naming where "live" begins makes the first id
        # an exact resume point, and replays whatever is published while we set up.
        if isinstance(selected.stream, Topic) and start.get(selected.name) is None:
            start[selected.name] = await hub.broker.last_position(selected.name)
    writer = CursorWriter(subscription.names, start)
    solo = len(subscription.selected) == 1
    turns = Turns(len(subscription.selected))
    sources = [
        _taking_turns(_source(index, selected, start.get(selected.name), hub), turns)
        for index, selected in enumerate(subscription.selected)
    ]
    activity.subscriptions += 1
    try:
        async with ops.merge(*sources).stream() as items:
            async for index, position, body, solo_frame in items:
                if position is None:
                    yield body
                elif isinstance(position, _End):
                    yield body
                    return
                elif solo and solo_frame is not None:
                    yield solo_frame
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


async def _source(
    index: int, selected: Selected, start: str | None, hub: Hub
) -> AsyncGenerator[Tagged, None]:
    """One selected stream's events, `count` of them at most, its failure made an event."""
    name = selected.name
    if selected.count == 0:
        return
    delivered = 0
    hub.activity.open_streams += 1
    try:
        definition = selected.stream
        if isinstance(definition, Topic):
            events = _topic(index, definition, start, hub)
        else:
            assert isinstance(definition, Stream)
            events = _generated(index, definition, selected)
        async with aclosing(events) as items:
            async for item in items:
                yield item
                if item[1] is not None:
                    delivered += 1
                    if delivered == selected.count:
                        return
    except Overflow as exc:
        logger.warning("a subscriber of %r fell behind and is cut off: %s", name, exc)
        yield index, END, control_body("overflow", reason=f"{exc} on {name!r}"), None
    except Interrupted as exc:  # a shared producer ended; it logged its own failure
        if exc.reason is not None:
            yield index, None, control_body("error", stream=name, error=exc.reason), None
    except Exception as exc:
        logger.exception("stream %r failed; its subscriber's other streams go on", name)
        error = f"{type(exc).__name__}: {exc}"
        yield index, None, control_body("error", stream=name, error=error), None
    finally:
        hub.activity.open_streams -= 1


async def _generated(
    index: int, definition: Stream, selected: Selected
) -> AsyncGenerator[Tagged, None]:
    name, model = definition.name, definition.event_model
    position = selected.after
    assert position is None or isinstance(position, int)
    async with aclosing(definition.open(selected.arguments, position)) as events:
        async for event in events:
            if not isinstance(event, model):
                raise TypeError(
                    f"stream {name!r} yielded {type(event).__name__}, expected {model.__name__}"
                )
            position = 0 if position is None else position + 1
            yield index, str(position), encode_body(name, event.model_dump_json()), None


async def _topic(
    index: int, definition: Topic, start: str | None, hub: Hub
) -> AsyncGenerator[Tagged, None]:
    assert start is not None
    name = definition.name
    subscription = await hub.broker.subscribe(name, start, hub.settings.buffer)
    if definition.producer is not None:
        hub.producers.acquire(definition)
    try:
        if subscription.gap is not None:
            gap = subscription.gap
            body = control_body(
                "gap", stream=name, requested=gap.requested, resumed_from=gap.resumed_from
            )
            yield index, None, body, None
        async for entry in subscription:
            yield index, entry.position, entry.body, entry.solo
    finally:
        await subscription.close()
        if definition.producer is not None:
            hub.producers.release(definition)
