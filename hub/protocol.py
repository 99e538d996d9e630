"""The hub's HTTP/1.1 connections under uvicorn: its httptools protocol, plus the limits and
the real disconnects that a server on the open internet needs and uvicorn leaves out.

`hub serve` runs uvicorn with `http=HubProtocol`. What it adds:

- **Time and size limits on the request head.** uvicorn waits for ever for a head, and
  httptools buffers a header of any length: one byte a second, or a header without end, would
  hold a connection (and its memory) for ever. Here the head must arrive within
  `--header-timeout`; the request target may take 8 KiB (414 `uri_too_long`) and the headers
  16 KiB (431 `headers_too_large`), counted as the bytes arrive. A connection that sent
  nothing at all is closed without an answer at the timeout, as nginx does.
- **A cap on connections** from the open-file limit (`Limits.max_connections`): past it a new
  connection is answered 503 `too_many_connections` at once and closed, so that the process
  never runs out of descriptors, which would leave it unable to accept or answer anyone.
- **Aborts.** ASGI has no way to say "drop this connection". An app that returns without
  ending its response makes uvicorn log an ERROR and call `transport.close()`, which first
  flushes what is buffered: it never finishes if the peer never reads, and a stalled client
  keeps its socket, its descriptor and megabytes of buffers for ever. So the protocol puts
  itself in each request's scope as the extension `hub.connection`, for the hub's responses:
  - `abort()`: `SO_LINGER` 0, then `transport.abort()`. The kernel drops what it holds for
    the peer and sends a RST, the descriptor is closed at once, and uvicorn's
    `connection_lost` tells the app `http.disconnect`, as for any client that leaves;
  - `close_soon()`: the close of a connection the hub ends on purpose, after a last frame:
    a flushing close, made an abort if the peer has not taken the rest within 2 s.
  uvicorn's own closes (keep-alive timeout, refusals, a response with `Connection: close`)
  get the same 2 s bound. Under another server the extension is absent, and the hub falls
  back to returning without completing the response.
- **A bounded graceful shutdown.** uvicorn's shutdown closes the listeners, then calls each
  connection's `shutdown()`. The first call tells the hub (`Hub.begin_shutdown`), which ends
  every stream with `hub.shutdown`. A connection still busy at the hub's deadline (a stalled
  reader, a half-sent POST) is aborted then, so uvicorn never waits past the grace.
- **Errors as JSON**, like every other error of the hub, not uvicorn's plain text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.exceptions import InvalidState
from websockets.http11 import Request as WebSocketRequest

from .errors import RequestError

if TYPE_CHECKING:
    from .runtime import Hub

__all__ = ["MAX_HEADER_BYTES", "MAX_TARGET_BYTES", "HubProtocol", "HubWebSocketProtocol"]

logger = logging.getLogger("hub")

MAX_TARGET_BYTES = 8 * 1024
MAX_HEADER_BYTES = 16 * 1024
# Bytes of a head in all, before it is complete: the two limits and the request line.
_MAX_HEAD_BYTES = MAX_TARGET_BYTES + MAX_HEADER_BYTES + 1024
# How long a connection the hub closes has to take what is left, before it is aborted.
CLOSE_WITHIN = 2.0
_NO_LINGER = struct.pack("ii", 1, 0)


class _Guard:
    """The protocol's own state, in one object: uvicorn's protocol has 28 attributes, and
    Python shares the keys of instance dicts up to 30, so ten more would cost every
    connection a dict of its own (1.3 KB)."""

    __slots__ = (
        "hub",
        "reading_head",
        "head_bytes",
        "header_bytes",
        "head_timer",
        "abort_timer",
        "flags",
    )

    def __init__(self, hub: Hub | None) -> None:
        self.hub = hub
        self.reading_head = True
        self.head_bytes = 0  # of the head being read, as they arrive
        self.header_bytes = 0  # of its headers, as parsed
        self.head_timer: asyncio.TimerHandle | None = None
        self.abort_timer: asyncio.TimerHandle | None = None
        self.flags = 0  # of _REFUSED, _LOST, _COUNTED


_REFUSED, _LOST, _COUNTED = 1, 2, 4


class HubProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # The app's lifespan puts its hub in the state it shares with the server.
        self._guard = _Guard(app_state.get("hub"))

    @property
    def hub(self) -> Hub | None:
        return self._guard.hub

    @property
    def header_timeout(self) -> float:
        hub = self._guard.hub
        return hub.settings.header_timeout if hub is not None else 10.0

    # The connection's life.

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self._guard
        limits = guard.hub.limits if guard.hub is not None else None
        if limits is not None:
            limits.connections += 1
            guard.flags |= _COUNTED
            if limits.connections > limits.max_connections:
                self._refuse(
                    RequestError(
                        503,
                        "too_many_connections",
                        f"this hub takes {limits.max_connections} connections at most and "
                        "is full; retry later",
                        retry_after=5,
                    )
                )
                return
        guard.head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        guard = self._guard
        if guard.flags & _COUNTED and guard.hub is not None:
            guard.hub.limits.connections -= 1
        guard.flags = (guard.flags | _LOST) & ~_COUNTED
        for timer in (guard.head_timer, guard.abort_timer):
            if timer is not None:
                timer.cancel()
        guard.head_timer = guard.abort_timer = None
        super().connection_lost(exc)

    def abort(self) -> None:
        """Drop the connection now: nothing left in the kernel for the peer, a RST, the
        descriptor closed."""
        if self._guard.flags & _LOST:
            return
        _abort(self.transport)

    def close_soon(self, within: float = CLOSE_WITHIN) -> None:
        """Close once what is buffered has gone out, or abort after `within` seconds."""
        if self._guard.flags & _LOST:
            return
        if not self.transport.is_closing():
            self.transport.close()
        self._abort_by(self.loop.time() + within)

    def _abort_by(self, when: float) -> None:
        guard = self._guard
        timer = guard.abort_timer
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        guard.abort_timer = self.loop.call_at(when, self.abort)

    # Reading requests.

    def data_received(self, data: bytes) -> None:
        guard = self._guard
        if guard.flags & _REFUSED:
            return
        self._unset_keepalive_if_required()
        if guard.reading_head:
            guard.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, RequestError):  # raised by on_url, on_header
                self._refuse(exc.__context__)
            else:
                self._malformed(exc)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            self._malformed(exc)
            return
        if guard.reading_head and guard.head_bytes > _MAX_HEAD_BYTES:
            self._refuse(
                RequestError(
                    431,
                    "headers_too_large",
                    f"the request head is over {_MAX_HEAD_BYTES} bytes; the headers may take "
                    f"{MAX_HEADER_BYTES} bytes and the request target {MAX_TARGET_BYTES}",
                )
            )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {"hub.connection": self}  # type: ignore[dict-item]
        guard = self._guard
        if not guard.reading_head:  # the next request on a kept-alive connection
            guard.reading_head = True
            guard.head_bytes = 0
            if guard.head_timer is None:
                guard.head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)
        guard.header_bytes = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > MAX_TARGET_BYTES:
            raise RequestError(
                414,
                "uri_too_long",
                f"the request target is over {MAX_TARGET_BYTES} bytes; select fewer streams "
                "or parameters, or send the cursor as a Last-Event-ID header",
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._guard.header_bytes += len(name) + len(value) + 4
        if self._guard.header_bytes > MAX_HEADER_BYTES:
            raise RequestError(
                431,
                "headers_too_large",
                f"the request headers are over {MAX_HEADER_BYTES} bytes",
            )

    def on_headers_complete(self) -> None:
        guard = self._guard
        guard.reading_head = False
        if guard.head_timer is not None:
            guard.head_timer.cancel()
            guard.head_timer = None
        super().on_headers_complete()

    def _head_timed_out(self) -> None:
        guard = self._guard
        guard.head_timer = None
        if not guard.reading_head or guard.flags & (_REFUSED | _LOST):
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a response is under way: the next head may wait for it
        if not guard.head_bytes:
            # Opened and silent (a browser's spare connection, or a slowloris): just close.
            guard.flags |= _REFUSED
            _throttled("silent", f"closed a connection silent for {self.header_timeout:g} s", self)
            self.close_soon()
            return
        self._refuse(
            RequestError(
                408,
                "header_timeout",
                f"the request head did not arrive within {self.header_timeout:g} s",
            )
        )

    # Writing.

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._guard.flags & _LOST:
            return
        if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            # Answered before its body was read (a refusal): what is left of the body may
            # trickle in for ever, so the connection is not kept.
            self.close_soon()
        elif self.transport.is_closing():
            self._abort_by(self.loop.time() + CLOSE_WITHIN)

    def timeout_keep_alive_handler(self) -> None:
        self.close_soon()

    def shutdown(self) -> None:
        hub = self._guard.hub
        if hub is not None:
            hub.begin_shutdown()  # once, at the first connection: ends every stream
        if self.cycle is None or self.cycle.response_complete:
            self.close_soon()
            return
        self.cycle.keep_alive = False
        if hub is not None and hub.shutdown_deadline is not None:
            self._abort_by(hub.shutdown_deadline)

    def handle_websocket_upgrade(self) -> None:
        # The connection goes on under the WebSocket protocol (`HubWebSocketProtocol`), which
        # counts it from here and lets it go when it is lost: this one never hears of it again.
        guard = self._guard
        if guard.flags & _COUNTED and guard.hub is not None:
            guard.hub.limits.connections -= 1
            guard.flags &= ~_COUNTED
        super().handle_websocket_upgrade()

    def send_400_response(self, msg: str) -> None:
        self._refuse(
            RequestError(400, "malformed_request", f"the request is not valid HTTP/1.1: {msg}")
        )

    def _malformed(self, exc: Exception) -> None:
        self.send_400_response(str(exc) or type(exc).__name__)

    def _refuse(self, refusal: RequestError) -> None:
        """Answer with a JSON error and close; nothing more is read from this connection."""
        guard = self._guard
        guard.flags |= _REFUSED
        if guard.hub is not None:
            guard.hub.activity.refused[refusal.code] += 1
        if guard.head_timer is not None:
            guard.head_timer.cancel()
            guard.head_timer = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started:
                self.close_soon()  # a response is under way: no room for another
                return
            # The app is reading a body that turned out malformed: from its side the
            # client is gone (its sends are dropped), and this answer is the response.
            cycle.disconnected = True
            cycle.message_event.set()
        body = json.dumps(refusal.body(), separators=(",", ":")).encode()
        head = [STATUS_LINE[refusal.status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
        ]
        head += [
            f"{name.lower()}: {value}\r\n".encode() for name, value in refusal.headers().items()
        ]
        head += [b"\r\n", body]
        self.transport.write(b"".join(head))
        self.close_soon()
        _throttled(refusal.code, f"refused a connection: {refusal.status} {refusal.code}", self)


def _abort(transport: asyncio.Transport) -> None:
    """`SO_LINGER` 0, then `transport.abort()`: nothing is left in the kernel for the peer,
    it gets a RST, and the descriptor is closed at once."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _NO_LINGER)
        except OSError:
            pass
    transport.abort()


_LOGGED: dict[str, tuple[float, int]] = {}  # what -> (when last logged, how many since)


def _throttled(what: str, message: str, protocol: HubProtocol) -> None:
    """One WARNING per kind of refusal every 10 s at most, with a count of the rest: a flood
    of bad connections must not flood the log."""
    now = time.monotonic()
    last, since = _LOGGED.get(what, (0.0, 0))
    if now - last < 10:
        _LOGGED[what] = (last, since + 1)
        return
    _LOGGED[what] = (now, 0)
    client = f"{protocol.client[0]}:{protocol.client[1]}" if protocol.client else "?"
    more = f" (and {since} more like it in the last 10 s)" if since else ""
    logger.warning("%s, from %s%s", message, client, more)


class HubWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, with what the hub's HTTP connections have: counted in the
    connection limit, `hub.connection` in the scope (`abort`, `close_now`), and a shutdown
    that lets the hub say goodbye: its first call ends every stream (`Hub.begin_shutdown`),
    each socket gets `hub.shutdown` and close code 1001 from the hub, and any still open at the
    hub's deadline is aborted (uvicorn's own would close them at once, with 1012)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.hub: Hub | None = app_state.get("hub")
        self._abort_timer: asyncio.TimerHandle | None = None
        self._lost = False
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.hub is not None:
            self.hub.limits.connections += 1
            self._counted = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted and self.hub is not None:
            self.hub.limits.connections -= 1
            self._counted = False
        self._lost = True
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        super().connection_lost(exc)

    def handle_connect(self, event: WebSocketRequest) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"]["hub.connection"] = self

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            # A denial is a complete answer: without this, uvicorn logs an ERROR that the app
            # "returned without completing handshake" for every refused socket.
            self.handshake_complete = True

    def abort(self) -> None:
        """Drop the connection now (see `HubProtocol.abort`)."""
        if self._lost:
            return
        _abort(self.transport)

    def close_now(self, texts: list[str], code: int, reason: str) -> bool:
        """Send `texts` and a close frame at once, without waiting for the peer to take what
        is queued before them (a subscriber that fell behind may never take it): a bounded
        few bytes more in the buffer. Then the closing handshake has `CLOSE_WITHIN` seconds,
        or the connection is aborted. False if it is closed or closing already."""
        if self.close_sent or self._lost or self.transport.is_closing():
            return False
        try:
            for text in texts:
                self.conn.send_text(text.encode())
            self.conn.send_close(code, reason)
        except InvalidState:
            return False
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        if self.read_paused:  # to read the peer's close
            self.read_paused = False
            self.transport.resume_reading()
        self._abort_by(self.loop.time() + CLOSE_WITHIN)
        return True

    def _abort_by(self, when: float) -> None:
        if self._lost:
            return
        timer = self._abort_timer
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._abort_timer = self.loop.call_at(when, self.abort)

    def keepalive_timeout(self) -> None:
        # uvicorn closes a socket that left a ping unanswered with a flushing close, which
        # never ends if the peer stopped reading: abort it if it has not ended in time.
        super().keepalive_timeout()
        self._abort_by(self.loop.time() + CLOSE_WITHIN)

    def shutdown(self) -> None:
        hub = self.hub
        if hub is None or not self.handshake_complete or self.close_sent:
            super().shutdown()
            return
        hub.begin_shutdown()  # the app sends hub.shutdown and closes with 1001
        if hub.shutdown_deadline is not None:
            self._abort_by(hub.shutdown_deadline)
