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

import logging
from collections.abc import AsyncIterator
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
    sources = [_generated(index, s, activity) for index, s in enumerate(subscription.selected)]
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


async def _generated(index: int, selected: Selected, activity: Activity) -> AsyncIterator[Tagged]:
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
                        f"stream {name!r} yielded {type(event).__name__}, "
                        f"expected {model.__name__}"
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
