"""hub.sse.SSEResponse on its own, with an ASGI `send` the test controls.

The end-to-end tests (test_app.py, test_topics.py) run it under uvicorn; these pin down what a
real socket makes hard to arrange: a send that stalls exactly when the test wants, to check
the direct path (`send_now`) never reorders frames, keeps one send in flight at a time, and
is cut off by the send timeout like any other send.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from hub.merge import Activity
from hub.sse import SSEResponse

SCOPE: dict[str, Any] = {
    "type": "http",
    "method": "GET",
    "path": "/events",
    "query_string": b"streams=chat",
    "client": ("127.0.0.1", 5555),
}


class Peer:
    """The ASGI server's side: records what is sent; a send of a body in `stall` waits for
    `release`; `receive` gives the request, then waits for `leave`."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.changed = asyncio.Condition()
        self.stall: set[bytes] = set()
        self.release = asyncio.Event()
        self.stalled = asyncio.Event()
        self.leave = asyncio.Event()
        self.requested = False

    async def send(self, message: dict[str, Any]) -> None:
        body = message.get("body", b"<start>")
        if body in self.stall:
            self.stalled.set()
            await self.release.wait()
        self.sent.append(body)
        async with self.changed:
            self.changed.notify_all()

    async def until_sent(self, body: bytes) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: body in self.sent), 5)

    async def receive(self) -> dict[str, Any]:
        if not self.requested:
            self.requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.leave.wait()
        return {"type": "http.disconnect"}


class Tracked:
    """Stands in for the hub: keeps the responses, and runs their sweep on demand."""

    def __init__(self) -> None:
        self.responses: set[SSEResponse] = set()
        self.activity = Activity()  # what the responses count

    def track(self, response: SSEResponse) -> None:
        self.responses.add(response)

    def untrack(self, response: SSEResponse) -> None:
        self.responses.discard(response)


async def chunks_from(queue: asyncio.Queue[bytes | None]) -> AsyncGenerator[bytes, None]:
    while (chunk := await queue.get()) is not None:
        yield chunk


async def started(
    peer: Peer, queue: asyncio.Queue[bytes | None], tracker: Tracked
) -> tuple[SSEResponse, asyncio.Task[None]]:
    response = SSEResponse(chunks_from(queue), tracker=tracker)
    task = asyncio.create_task(response(SCOPE, peer.receive, peer.send))
    await queue.put(b"first")
    await peer.until_sent(b"first")  # the response runs, and waits for more
    return response, task


@pytest.mark.anyio
async def test_the_head_waits_for_the_first_chunk() -> None:
    # The hub's first chunk is ready once every topic's starting position is fixed: a client
    # that has the head misses nothing published after it.
    peer, queue, tracker = Peer(), asyncio.Queue[bytes | None](), Tracked()
    response = SSEResponse(chunks_from(queue), tracker=tracker)
    task = asyncio.create_task(response(SCOPE, peer.receive, peer.send))
    for _ in range(20):  # plenty of loop turns to send a head, were it not waiting
        await asyncio.sleep(0)
    assert peer.sent == []
    await queue.put(b"first")
    await peer.until_sent(b"first")
    assert peer.sent == [b"<start>", b"first"]
    await queue.put(None)
    await asyncio.wait_for(task, 5)


@pytest.mark.anyio
async def test_a_direct_send_goes_out_at_once_when_idle() -> None:
    peer, queue, tracker = Peer(), asyncio.Queue[bytes | None](), Tracked()
    response, task = await started(peer, queue, tracker)
    assert response.send_now(b"direct") is True
    assert peer.sent == [b"<start>", b"first", b"direct"]  # sent before send_now returned
    await queue.put(None)
    await asyncio.wait_for(task, 5)
    assert peer.sent[-1] == b""  # the response ended properly


@pytest.mark.anyio
async def test_a_stalled_direct_send_keeps_order_and_one_send_at_a_time() -> None:
    peer, queue, tracker = Peer(), asyncio.Queue[bytes | None](), Tracked()
    response, task = await started(peer, queue, tracker)
    peer.stall.add(b"slow")
    assert response.send_now(b"slow") is True  # taken: a trampoline finishes it
    await asyncio.wait_for(peer.stalled.wait(), 5)
    assert response.send_now(b"refused") is False  # one send at a time: the caller queues
    await queue.put(b"queued")  # what the response's own task sends next
    for _ in range(20):  # plenty of loop turns for it to send, were it not waiting
        await asyncio.sleep(0)
    assert b"queued" not in peer.sent  # it waits for the direct send in flight
    peer.release.set()
    await queue.put(None)
    await asyncio.wait_for(task, 5)
    assert peer.sent == [b"<start>", b"first", b"slow", b"queued", b""]


@pytest.mark.anyio
async def test_a_stuck_direct_send_is_cut_off_by_the_send_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    peer, queue, tracker = Peer(), asyncio.Queue[bytes | None](), Tracked()
    response, task = await started(peer, queue, tracker)
    peer.stall.add(b"never")
    assert response.send_now(b"never") is True
    await asyncio.wait_for(peer.stalled.wait(), 5)
    response.look_after(time.monotonic(), ping_interval=0, send_timeout=60)
    assert not task.done()  # stuck, but not yet for a whole timeout
    with caplog.at_level(logging.WARNING, logger="hub"):
        response.look_after(time.monotonic() + 61, ping_interval=0, send_timeout=60)
        await asyncio.wait_for(task, 5)
    assert "cut off 127.0.0.1:5555" in caplog.text
    assert tracker.responses == set()  # it is gone from the hub's sweep


@pytest.mark.anyio
async def test_a_departed_client_stops_the_response_and_its_chunks() -> None:
    peer, queue, tracker = Peer(), asyncio.Queue[bytes | None](), Tracked()
    closed = asyncio.Event()

    async def chunks() -> AsyncGenerator[bytes, None]:
        try:
            async for chunk in chunks_from(queue):
                yield chunk
        finally:
            closed.set()

    response = SSEResponse(chunks(), tracker=tracker)
    task = asyncio.create_task(response(SCOPE, peer.receive, peer.send))
    await queue.put(b"first")
    await peer.until_sent(b"first")
    peer.leave.set()
    await asyncio.wait_for(task, 5)  # ends without raising
    assert closed.is_set()
    assert response.send_now(b"late") is False  # nothing more goes to a departed client
    assert tracker.responses == set()
