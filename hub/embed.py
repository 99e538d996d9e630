"""Hub streams inside an app's own routes: `hub.subscribe()`, for sse-starlette.

    @app.get("/my/events")
    async def my_events(user: User = Depends(current_user)) -> EventSourceResponse:
        return EventSourceResponse(hub.subscribe(["echo", f"inbox/{user.name}"]))

A thin adapter over the one path, as the WebSocket is: the selection is validated as `/events`
validates a query (`Hub.open`), the frames are `Hub.frames()`, and each frame becomes one
sse-starlette `ServerSentEvent` with the same event name, id (the cursor) and JSON data. The
first is the starting cursor alone, as `/events` sends it; when every stream has ended
(`count`), the last is `hub.end`, as on `/events`. Closing the generator (the client left:
sse-starlette closes it) closes every source.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import aclosing
from typing import Any

from fastapi import HTTPException
from sse_starlette import ServerSentEvent

from .auth import Principal
from .errors import RequestError
from .events import decode_frames
from .merge import Drop
from .runtime import Hub
from .subscription import Subscription, query_pairs, split_streams

__all__ = ["subscribe"]


def subscribe(
    streams: str | Sequence[str],
    params: Mapping[str, Any] | Iterable[tuple[str, Any]] = (),
    *,
    last_event_id: str | None = None,
    principal: Principal | None = None,
    hub: Hub | None = None,
) -> AsyncIterator[ServerSentEvent]:
    """The events of a selection, for `EventSourceResponse(...)`.

    `streams` are names (`"echo,room/lobby"` or a list); `params` the stream parameters, as
    the query takes them (`{"message": "hi", "echo.interval": 0.5}`); `last_event_id` the
    cursor to resume from (pass the request's `Last-Event-ID` header). `principal` is the
    caller, for the streams that take one and, with the hub's authorization on, for its
    grants; without authorization the app's own dependencies decide who gets here.

    The selection is checked now: a refusal raises FastAPI's `HTTPException` with the hub's
    status, its error (`{"code", "message", ...}`) as `detail`, and its headers, before any
    stream is opened. `hub` is the running hub (the one started last in this process by
    default: `create_app()`'s, once its lifespan has started it).
    """
    running = hub if hub is not None else Hub.current
    if running is None:
        raise RuntimeError(
            "no hub is running in this process: start the app from create_app() (its "
            "lifespan starts the hub; mounted, run it from your app's lifespan), or pass hub="
        )
    names = split_streams([streams] if isinstance(streams, str) else streams)
    try:
        subscription = running.open(
            names, query_pairs(params), last_event_id, running.auth.access_for(principal)
        )
    except RequestError as exc:
        raise HTTPException(exc.status, exc.body()["error"], exc.headers() or None) from None
    return _events(running, subscription)


async def _events(hub: Hub, subscription: Subscription) -> AsyncIterator[ServerSentEvent]:
    try:
        async with aclosing(hub.frames(subscription)) as chunks:
            async for chunk in chunks:
                for event, id, data in decode_frames(chunk):
                    yield ServerSentEvent(
                        data=data.decode() if data is not None else None,
                        event=event.decode() if event is not None else None,
                        id=id.decode() if id is not None else None,
                    )
    except Drop:
        return  # it fell behind: its last event, hub.overflow, went out above
