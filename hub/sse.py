"""The SSE response: one subscription's frames onto one HTTP connection, lean.

It replaces sse-starlette's `EventSourceResponse` on the hot path, keeping its duties (pings,
disconnect, send timeout, shutdown) and shedding its per-frame cost, which the benchmark
showed to dominate:
- the frames come in batches and each batch is one ASGI `send` (one write), not one per frame;
- two tasks per connection: the request's own, which sends, and a watcher, which waits for
  the client to leave (uvicorn's `send` ignores a departed client, so only `receive` tells);
- keep-alive pings come from one task for all connections (`Hub`), which pings the quiet ones;
- the send timeout costs no timer at all: each send notes when it started, and the hub's one
  task that visits every response for pings also cuts off any stuck in a send for too long
  (a timer per send was a fifth of the fan-out's CPU).

A client that leaves cancels the sending task; the frames generator is closed and with it every
source. When the hub ends a response itself, the connection goes with it, even if the client
never reads again: a client stuck in a send is aborted at once (`hub.protocol`'s
`hub.connection` extension: nothing is left in the kernel, the descriptor is closed); one that
fell behind (`Drop`) or a response the hub closes at shutdown gets its last frames and the end
of the response within `END_WITHIN` seconds, then a close, or an abort if it took nothing.
Each cut-off is one WARNING line naming the client and the reason, never an ERROR.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Coroutine, Generator
from typing import Any, Protocol

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from .auth import redact
from .events import control_body
from .merge import Activity, Drop

__all__ = ["SSEResponse"]

logger = logging.getLogger("hub")

PING = b": ping\n\n"
# Seconds the last frames of a response that the hub ends have to go out, before the client is
# dropped: short, so that its connection is gone within 2 s.
END_WITHIN = 1.5
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]


class Tracker(Protocol):
    """Who keeps the open responses, to ping and to close them (the `Hub`), and counts what
    they do (`activity`)."""

    activity: Activity

    def track(self, response: SSEResponse) -> None: ...

    def untrack(self, response: SSEResponse) -> None:
        """Forget it, and release what it held (the response is over)."""


class SSEResponse(Response):
    """An ASGI response streaming `chunks`, each made of whole SSE frames.

    A `Response` so that FastAPI hands it over as it is; only `__call__` matters.
    """

    media_type = "text/event-stream"
    transport = "sse"  # as /metrics names it
    # Set only when used, so that an idle subscriber's response carries no more than it needs.
    client: str | None = None  # the address whose stream this is, for the hub's limits
    _last = b""  # the frames to end with when the hub closes it
    _dropped: str | None = None  # why the hub dropped it, if it fell behind
    # When the caller's token runs out (Unix time): the response ends with `hub.expired`.
    expires: float | None = None
    _expired = False

    def __init__(
        self,
        chunks: AsyncGenerator[bytes, None] | None = None,
        *,
        headers: dict[str, str] | None = None,
        tracker: Tracker | None = None,
    ) -> None:
        self.chunks = chunks  # may be set after construction, before the response runs
        self.status_code = 200
        self.background: BackgroundTask | None = None
        self.raw_headers = _HEADERS + [
            (key.lower().encode(), value.encode()) for key, value in (headers or {}).items()
        ]
        self._tracker = tracker
        self._task: asyncio.Task[None] | None = None
        self._stopping = False  # we cancelled the sender: client gone, or the hub stops
        self._disconnected = False
        self._sending_since: float | None = None  # when the send under way began
        self._last_send = 0.0
        self._cut_off: float | None = None  # how long the send was stuck, if we cut it
        self._send_to: Send | None = None
        self._ping: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[Message] | None = None
        self._finishing: asyncio.Future[None] | None = None  # a send begun by send_now

    def close(self, last: bytes = b"") -> None:
        """End this response now, with `last` as its last frames (the hub is shutting down)."""
        self._last = last
        self._stop()

    def drop(self, reason: str) -> None:
        """End this response now: it fell behind `reason` (and may be stuck sending)."""
        if not self._stopping:
            self._dropped = reason
            self._stop()

    def expire(self) -> None:
        """End this response now, with `hub.expired`: the caller's token ran out. The
        connection goes with it; the client reconnects with a fresh token and its cursor."""
        if not self._stopping:
            self._expired = True
            self._last = control_body(
                "expired", reason="the token has expired; reconnect with a fresh one"
            )
            self._stop()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.chunks is None:
            raise RuntimeError("SSEResponse has nothing to send: set its chunks first")
        start: Message = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        if scope.get("method") == "HEAD":  # headers only: a stream would never end
            try:
                await send(start)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                await self.chunks.aclose()
                if self._tracker is not None:
                    self._tracker.untrack(self)
            return
        self._task = asyncio.current_task()
        self._send_to = send
        activity = self._tracker.activity if self._tracker is not None else Activity()
        # The server's hold on the connection, to drop it for real (`hub.protocol`).
        connection = scope.get("extensions", {}).get("hub.connection")
        if self._tracker is not None:
            self._tracker.track(self)
        self._watch(receive)
        expiry = None
        if self.expires is not None:
            expiry = asyncio.get_running_loop().call_later(
                max(self.expires - time.time(), 0.0), self.expire
            )
        try:
            try:
                # The head waits for the first chunk (for the hub, the retry hint and the
                # starting cursor, ready once every topic's starting position is fixed), and
                # goes out with it.
                first = await anext(self.chunks, None)
                await self._send(send, start)
                if first:
                    await self._send(
                        send, {"type": "http.response.body", "body": first, "more_body": True}
                    )
                    activity.sse_bytes += len(first)
                # Inline rather than in a helper: a subscriber's stack of frames lives as long
                # as it does, and there are thousands of subscribers.
                async for chunk in self.chunks:
                    finishing = self._finishing
                    if finishing is not None and not finishing.done():
                        # One send at a time: a direct one still under way goes first, and
                        # the send timeout keeps watching whichever is in flight. (If it
                        # failed, it has already stopped this response.)
                        await asyncio.wait((finishing,))
                    # _send inlined: this runs once per event per subscriber on fan-out.
                    self._sending_since = time.monotonic()
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    self._last_send = time.monotonic()
                    self._sending_since = None
                    activity.sse_bytes += len(chunk)
            finally:
                await self.chunks.aclose()
            await self._send(send, {"type": "http.response.body", "body": b"", "more_body": False})
        except Drop as drop:
            # The frames ended with the reason (they went out above): end the response, and
            # the connection with it, even if the client has stopped reading. Stopping from
            # here on: the disconnect this causes must not cancel what follows.
            self._stopping = True
            logger.warning("cut off %s (%s): %s", _client(scope), _query(scope), drop.reason)
            activity.cut_off["overflow"] += 1
            await self._end(send, b"", connection, drop=True)
        except asyncio.CancelledError:
            if not self._stopping:
                raise  # cancelled by the server, not by us: let it unwind
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            if self._cut_off is not None:
                activity.cut_off["send_timeout"] += 1
                logger.warning(
                    "cut off %s (%s): it accepted no frame for %.1f s (--send-timeout)",
                    _client(scope),
                    _query(scope),
                    self._cut_off,
                )
                await self._drop(connection)
            elif self._dropped is not None:
                activity.cut_off["overflow"] += 1
                logger.warning(
                    "cut off %s (%s): %s (--buffer)", _client(scope), _query(scope), self._dropped
                )
                await self._end(
                    send, control_body("overflow", reason=self._dropped), connection, drop=True
                )
            elif self._expired:
                activity.cut_off["expired"] += 1
                logger.info("ended %s (%s): its token expired", _client(scope), _query(scope))
                await self._end(send, self._last, connection, drop=True)
            elif not self._disconnected:
                # The hub stops: the generators are closed, and a client that is still there
                # gets the last frames and a proper end of the response.
                await self._end(send, self._last, connection, drop=False)
        finally:
            if expiry is not None:
                expiry.cancel()
            if self._finishing is not None:
                self._finishing.cancel()
            watcher, self._watcher = self._watcher, None
            if watcher is not None:
                watcher.cancel()
            if self._tracker is not None:
                self._tracker.untrack(self)
        if self.background is not None:
            await self.background()

    async def _end(self, send: Send, last: bytes, connection: Any, *, drop: bool) -> None:
        """Send `last` and the end of the response, within `END_WITHIN` seconds; then close
        the connection if `drop`. A client that does not take them in time is dropped."""
        finishing = self._finishing
        try:
            async with asyncio.timeout(END_WITHIN):
                if finishing is not None and not finishing.done():
                    await asyncio.wait((finishing,))
                if last:
                    await send({"type": "http.response.body", "body": last, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except Exception:  # noqa: BLE001 - a timeout, or a connection that failed meanwhile
            await self._drop(connection)
            return
        if drop and connection is not None:
            connection.close_soon()

    async def _drop(self, connection: Any) -> None:
        """Abort the connection, and wait until the server has seen it go, so that it does not
        take the unfinished response for an error of ours."""
        if connection is None:
            return  # not the hub's protocol: returning unfinished is all there is
        connection.abort()
        watcher = self._watcher
        if watcher is not None and not watcher.done():
            await asyncio.wait((watcher,), timeout=1.0)

    async def _send(self, send: Send, message: Message) -> None:
        self._sending_since = time.monotonic()
        try:
            await send(message)
        finally:
            self._sending_since = None
            self._last_send = time.monotonic()

    def send_now(self, frames: bytes) -> bool:
        """Send `frames` at once, from outside the response's task, if it is idle.

        For a subscriber of one topic: the publish hands it the shared frames directly, and
        its task is not woken at all (a third of a delivery's cost on fan-out). The ASGI send
        is stepped by hand: uvicorn's completes without suspending unless the socket is
        backed up; if it does suspend, a small task finishes it, and later events queue for
        the response's task as usual until it has.
        """
        send = self._send_to
        if send is None or self._stopping or self._sending_since is not None:
            return False
        now = time.monotonic()
        step = send({"type": "http.response.body", "body": frames, "more_body": True})
        self._sending_since = now
        if not isinstance(step, Coroutine):  # another server's awaitable: just await it
            self._finishing = asyncio.ensure_future(step)
            self._finishing.add_done_callback(self._sent)
            return True
        tracker = self._tracker
        if tracker is not None:
            tracker.activity.sse_bytes += len(frames)
        try:
            pending = step.send(None)
        except StopIteration:
            self._sending_since = None
            self._last_send = now
            return True
        except BaseException:
            self._sending_since = None
            self._stop()  # the connection is failing
            return True
        self._finishing = asyncio.ensure_future(_Resumed(step, pending).run())
        self._finishing.add_done_callback(self._sent)
        return True

    def _sent(self, task: asyncio.Future[None]) -> None:
        self._sending_since = None
        self._last_send = time.monotonic()
        if not task.cancelled() and task.exception() is not None:
            self._stop()

    def look_after(self, now: float, ping_interval: float, send_timeout: float) -> None:
        """Cut the connection off if a send is stuck for `send_timeout` seconds; else ping it
        if nothing was sent for `ping_interval`. Either check is off at 0."""
        if self._send_to is None or self._stopping:
            return
        since = self._sending_since
        if since is not None:
            if send_timeout and now - since >= send_timeout:
                self._cut_off = now - since
                self._stop()
            return
        if ping_interval and now - self._last_send >= ping_interval:
            message: Message = {"type": "http.response.body", "body": PING, "more_body": True}
            self._ping = asyncio.create_task(self._send(self._send_to, message))
            self._ping.add_done_callback(_quietly)

    def _stop(self) -> None:
        # Once: what follows the first stop (the last frames, an abort) is bounded already,
        # and must not be cancelled by the disconnect that it causes itself.
        if self._task is not None and not self._task.done() and not self._stopping:
            self._stopping = True
            self._task.cancel()

    def _watch(self, receive: Receive) -> None:
        """Wait for the client to leave, then stop the sender.

        A task on uvicorn's `receive` itself, renewed from its callback, rather than a loop
        of ours around it: one coroutine frame fewer under every subscriber.
        """
        self._receive = receive
        self._watcher = asyncio.ensure_future(receive())
        self._watcher.add_done_callback(self._received)

    def _received(self, done: asyncio.Task[Message]) -> None:
        if done.cancelled() or self._watcher is not done:
            return
        if done.exception() is None and done.result()["type"] != "http.disconnect":
            self._watch(self._receive)  # the request's (empty) body: keep listening
            return
        self._disconnected = True
        self._stop()


class _Resumed:
    """Finishes a coroutine that was stepped by hand and suspended on `pending`: yields what it
    waits on to the running task and passes back results and exceptions, as `await` would."""

    def __init__(self, step: Coroutine[Any, Any, None], pending: Any) -> None:
        self.step = step
        self.pending = pending

    async def run(self) -> None:
        await self

    def __await__(self) -> Generator[Any, Any, None]:
        waiting_on = self.pending
        while True:
            try:
                result = yield waiting_on
            except BaseException as exc:  # noqa: BLE001 - every exception goes into the step
                try:
                    waiting_on = self.step.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                waiting_on = self.step.send(result)
            except StopIteration:
                return


def _client(scope: Scope) -> str:
    client = scope.get("client") or ("?", 0)
    return f"{client[0]}:{client[1]}"


def _query(scope: Scope) -> str:
    query: bytes = scope.get("query_string", b"")
    return redact(query.decode(errors="replace"))[:200]


def _quietly(task: asyncio.Task[None]) -> None:
    # A ping that timed out or found the connection gone: the sender will notice on its own.
    if not task.cancelled():
        task.exception()
