"""FastAPI + sse-starlette anchor: dict events, as a plain app would write them.

- `GET /events?count=N&interval=0&message=hello`: `echo` and `reverse_echo` events alternately,
  each a dict `{"event", "id", "data"}` with the data shaped like the hub's echo
  (`{"message", "created_at"}`), `count` events in all (unbounded by default), sleeping
  `interval` seconds after each pair.
- `GET /idle`: an SSE response that sends nothing and holds the connection open.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from fastapi import FastAPI
from sse_starlette import EventSourceResponse

from bench.anchors import run

app = FastAPI()
MAX_EVENTS = 100_000_000
NO_PING = 3600  # seconds: keep-alive comments out of the measurement


def _event(name: str, position: int, message: str) -> dict[str, str]:
    created_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return {
        "event": name,
        "id": f"{name}:{position}",
        "data": json.dumps({"message": message, "created_at": created_at}, separators=(",", ":")),
    }


@app.get("/events")
async def events(
    count: int = MAX_EVENTS, interval: float = 0.0, message: str = "hello"
) -> EventSourceResponse:
    async def generate() -> AsyncIterator[dict[str, str]]:
        sent = 0
        position = 0
        while sent < min(count, MAX_EVENTS):
            yield _event("echo", position, message)
            sent += 1
            if sent < count:
                yield _event("reverse_echo", position, message[::-1])
                sent += 1
            position += 1
            await asyncio.sleep(interval)

    return EventSourceResponse(generate(), ping=NO_PING)


@app.get("/idle")
async def idle() -> EventSourceResponse:
    async def nothing() -> AsyncIterator[dict[str, str]]:
        await asyncio.Event().wait()
        yield {}  # never reached

    return EventSourceResponse(nothing(), ping=NO_PING)


if __name__ == "__main__":
    run(app, __doc__ or "")
