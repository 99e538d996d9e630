"""The SSE response: one subscription's frames onto one HTTP connection, lean.

It replaces sse-starlette's `EventSourceResponse` on the hot path, keeping its duties (pings,
disconnect, send timeout, shutdown) and shedding its per-frame cost, which the benchmark
showed to dominate:
- the frames come in batches and each batch is one ASGI `send` (one write), not one per frame;
- two tasks per connection: the request's own, which sends, and a watcher, which waits for
  the client to leave and sends the keep-alive pings when the connection is quiet;
- the send timeout is one timer per batch, not an anyio cancel scope per frame.

A client that leaves cancels the sending task; the frames generator is closed and with it every
source. On shutdown the hub closes every open response the same way, so `hub serve` stops
promptly on SIGTERM even with streams open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

__all__ = ["SSEResponse"]

logger = logging.getLogger("hub")

PING = b": ping\n\n"


class SSEResponse(Response):
    """An ASGI response streaming `chunks`, each made of whole SSE frames.

    A `Response` so that FastAPI hands it over as it is; only `__call__` matters.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        chunks: AsyncGenerator[bytes, None],
        *,
        ping_interval: float = 15.0,
        send_timeout: float | None = 10.0,
        headers: dict[str, str] | None = None,
        register: Callable[[SSEResponse], Callable[[], None]] | None = None,
    ) -> None:
        if ping_interval < 0:
            raise ValueError(f"ping_interval must be >= 0 (0 disables pings), got {ping_interval}")
        if send_timeout is not None and send_timeout <= 0:
            raise ValueError(f"send_timeout must be > 0 or None, got {send_timeout}")
        self.chunks = chunks
        self.status_code = 200
        self.background: BackgroundTask | None = None
        self.ping_interval = ping_interval
        self.send_timeout = send_timeout
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
            *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
        ]
        self._register = register
        self._task: asyncio.Task[None] | None = None
        self._stopping = False  # we cancelled the sender: client gone, or the hub stops
        self._sending = False
        self._last_send = 0.0

    def close(self) -> None:
        """End this response now (the hub is shutting down)."""
        if self._task is not None and not self._stopping:
            self._stopping = True
            self._task.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start: Message = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        if scope.get("method") == "HEAD":  # headers only: a stream would never end
            await send(start)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            await self.chunks.aclose()
            return
        self._task = asyncio.current_task()
        unregister = self._register(self) if self._register is not None else None
        watcher = asyncio.create_task(self._watch(receive, send))
        try:
            await self._stream(start, send)
        except asyncio.CancelledError:
            if not self._stopping:
                raise  # cancelled by the server, not by us: let it unwind
            # The client left, or the hub stops: the generators are closed; we are done.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
        except TimeoutError:
            client = scope.get("client") or ("?", 0)
            logger.warning(
                "cut off %s:%s: it accepted no frame for %s s (%s)",
                client[0],
                client[1],
                self.send_timeout,
                scope.get("query_string", b"").decode(errors="replace"),
            )
        finally:
            watcher.cancel()
            if unregister is not None:
                unregister()
        if self.background is not None:
            await self.background()

    async def _stream(self, start: Message, send: Send) -> None:
        await self._send(send, start)
        async with aclosing(self.chunks) as chunks:
            async for chunk in chunks:
                await self._send(
                    send, {"type": "http.response.body", "body": chunk, "more_body": True}
                )
        await self._send(send, {"type": "http.response.body", "body": b"", "more_body": False})

    async def _send(self, send: Send, message: Message) -> None:
        self._sending = True
        try:
            if self.send_timeout is None:
                await send(message)
            else:
                async with asyncio.timeout(self.send_timeout):
                    await send(message)
        finally:
            self._sending = False
            self._last_send = time.monotonic()

    async def _watch(self, receive: Receive, send: Send) -> None:
        """Wait for the client to leave; ping when nothing was sent for a ping interval."""
        interval = self.ping_interval or None
        while True:
            try:
                async with asyncio.timeout(interval):
                    message = await receive()
            except TimeoutError:
                quiet_for = time.monotonic() - self._last_send
                if not self._sending and quiet_for >= interval - 0.01:  # type: ignore[operator]
                    await send({"type": "http.response.body", "body": PING, "more_body": True})
                    self._last_send = time.monotonic()
                continue
            if message["type"] == "http.disconnect":
                if self._task is not None and not self._task.done():
                    self._stopping = True
                    self._task.cancel()
                return
