"""Bare ASGI anchor: one pre-encoded SSE frame per `send`, as fast as possible.

`GET /events?streams=a,b&count=N` cycles through one frame per name (shaped like the hub's
`echo` frames), one frame per ASGI `send`, until `count` frames or the client leaves. No
framework, no per-event encoding: this is the per-frame ceiling of uvicorn + uvloop + httptools.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from bench.anchors import run

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]
MAX_FRAMES = 100_000_000
YIELD_EVERY = 64  # frames between explicit yields to the loop, to notice a disconnect


def frame(name: str, names: list[str]) -> bytes:
    """A frame like the hub's: the cursor of every selected stream, the name, the JSON."""
    cursor = ",".join(f"{other}:0" for other in names)
    created_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    data = json.dumps({"message": "hello", "created_at": created_at}, separators=(",", ":"))
    return f"id: {cursor}\nevent: {name}\ndata: {data}\n\n".encode()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await receive()  # lifespan.startup
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})
        return
    query = parse_qs(scope["query_string"].decode())
    names = query.get("streams", ["echo,reverse_echo"])[0].split(",")
    count = min(int(query.get("count", [MAX_FRAMES])[0]), MAX_FRAMES)
    frames = [frame(name, names) for name in names]
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.create_task(watch())
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": b"retry: 3000\n\n", "more_body": True})
    try:
        for i in range(count):
            await send(
                {"type": "http.response.body", "body": frames[i % len(frames)], "more_body": True}
            )
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
                if gone.is_set():
                    return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        watcher.cancel()


if __name__ == "__main__":
    run(app, __doc__ or "")
