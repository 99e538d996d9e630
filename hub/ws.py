"""The WebSocket transport, `/ws`: a subscription as `/events` makes it, sent as JSON messages;
and publishing on the same socket.

A thin adapter over the one path: the request is admitted and its subscription opened by the
app's `admit` (the query, the grants and the limits of `/events`), its frames are `hub.frames()`
itself, and each frame becomes one text message, `{"event": ..., "id": ..., "data": ...}`, built
from the frame's bytes (the data is already JSON). The first message is `{"id": <cursor>}`,
the starting cursor, as the SSE response's first id-only frame.

When every selected stream has ended (`count`, generators that returned or raised), the last
message is `hub.end` and the close code 1000; a subscription that stops without ending (the
broker is unavailable) closes with 1013, for the client to reconnect and resume.

Its rules are the SSE response's (`hub.sse`): a subscriber that falls behind the buffer gets
`hub.overflow` and close code 1013; one stuck in a send for `--send-timeout` is dropped; at
shutdown each gets `hub.shutdown` and close code 1001; when its token runs out, `hub.expired`
and 4401. Under `hub serve`, the closing messages and the close frame are written at once,
after whatever is queued, and the connection is aborted if the peer has not taken them and
answered the close within `hub.protocol.CLOSE_WITHIN` seconds (`hub.connection.close_now`):
a client that stopped reading never holds one, and one that reads again in time still learns
why it was closed. Keep-alive is the protocol's own ping, sent by the server (`hub serve` sets
its interval).

A refused request is denied before the handshake, with the status and JSON body `/events`
answers with (the ASGI WebSocket denial response); under a server without it, the socket is
accepted, sent the error as a message, and closed with code 4000 + status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send

from .auth import Access, redact
from .bodies import parse_json, published_json
from .errors import RequestError
from .events import control_body, decode_frames
from .merge import END, Drop
from .sse import END_WITHIN
from .subscription import Subscription

if TYPE_CHECKING:
    from .runtime import Hub

__all__ = ["Admit", "WebSocketSubscriber", "check_origin", "deny", "serve_websocket"]

logger = logging.getLogger("hub")

# Close codes: the standard ones, and 4000 + an HTTP status for a refusal after the handshake.
GOING_AWAY = 1001
TRY_AGAIN_LATER = 1013
ENDED = 1000
# What a publish message may hold.
_PUBLISH_KEYS = frozenset({"publish", "data", "ref"})
_PUBLISH_SHAPE = (
    'a message publishes: {"publish": "<topic>", "data": {...} or [{...}, ...]}, with an '
    'optional "ref" echoed in the answer'
)

# The app's admission of a request (its query, its token, the limits): the subscription, the
# caller's access and its address; or a RequestError.
Admit = Callable[[Scope], tuple[Subscription, Access, str]]


async def serve_websocket(
    hub: Hub, scope: Scope, receive: Receive, send: Send, admit: Admit
) -> None:
    """Serve one WebSocket connection to `/ws`."""
    if (await receive())["type"] != "websocket.connect":
        return  # gone before it asked
    try:
        check_origin(scope, hub.settings.cors_origins)
        subscription, access, client = admit(scope)
    except RequestError as exc:
        hub.activity.refused[exc.code] += 1
        await deny(scope, send, exc)
        return
    subscriber = WebSocketSubscriber(hub, scope, receive, send, access)
    subscriber.client = client  # released by the hub when it is over
    await subscriber.run(subscription)


def check_origin(scope: Scope, allowed: tuple[str, ...]) -> None:
    """A 403 for a browser's WebSocket from another site: browsers apply no CORS to
    WebSockets, and send the `hub_token` cookie along, so any page could read a signed-in
    user's streams. Same-origin pages and the `--cors-origin` origins are let in; clients
    that send no `Origin` (programs) are not browsers, and are."""
    origin = Headers(scope=scope).get("origin")
    if origin is None or "*" in allowed or origin in allowed:
        return
    host = Headers(scope=scope).get("host", "")
    if urlsplit(origin).netloc.lower() == host.lower() and host:
        return
    raise RequestError(
        403,
        "origin_not_allowed",
        f"a WebSocket from the origin {origin[:200]!r} is not accepted: only same-origin pages "
        "and the origins named by --cors-origin may open one",
        origin=origin[:200],
    )


async def deny(scope: Scope, send: Send, refusal: RequestError) -> None:
    """Refuse the handshake with the HTTP status and JSON body of `refusal`."""
    body = json.dumps(refusal.body(), separators=(",", ":")).encode()
    if "websocket.http.response" in scope.get("extensions", {}):
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        headers += [(k.lower().encode(), v.encode()) for k, v in refusal.headers().items()]
        await send(
            {"type": "websocket.http.response.start", "status": refusal.status, "headers": headers}
        )
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": body.decode()})
    await send(
        {
            "type": "websocket.close",
            "code": 4000 + refusal.status,
            "reason": _reason(refusal.message),
        }
    )


def _reason(text: str) -> str:
    """A close reason: at most 123 bytes of UTF-8."""
    encoded = text.encode()
    if len(encoded) <= 123:
        return text
    return encoded[:120].decode(errors="ignore") + "..."


def message_of(event: bytes | None, id: bytes | None, data: bytes | None) -> str:
    """One frame's message: `{"event", "id", "data"}`, without the parts it has not. Names
    and cursors hold nothing JSON escapes; the data is the event's JSON as it is."""
    parts = []
    if event is not None:
        parts.append(b'"event":"' + event + b'"')
    if id is not None:
        parts.append(
            b'"id":'
            + (json.dumps(id.decode()).encode() if b'"' in id or b"\\" in id else b'"' + id + b'"')
        )
    if data is not None:
        parts.append(b'"data":' + data)
    return (b"{" + b",".join(parts) + b"}").decode()


class WebSocketSubscriber:
    """One `/ws` connection: its subscription's messages out, its publishes in. Tracked by
    the hub as an SSE response is: pinged by the protocol, cut off when stuck, closed at
    shutdown."""

    transport = "ws"  # as /metrics names it

    def __init__(
        self, hub: Hub, scope: Scope, receive: Receive, send: Send, access: Access
    ) -> None:
        self.hub = hub
        self.client: str | None = None
        self._scope = scope
        self._receive = receive
        self._send_to = send
        self._access = access
        # The server's hold on the connection, to drop it for real (`hub.protocol`).
        self._connection = scope.get("extensions", {}).get("hub.connection")
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._closing = False  # closing messages under way: publish answers are dropped
        self._disconnected = False
        self._sending_since: float | None = None
        self._cut_off: float | None = None
        self._dropped: str | None = None
        self._expired = False
        self._last = b""

    # What the hub calls (`hub.runtime.Response`).

    def close(self, last: bytes = b"") -> None:
        """End now, with the messages of `last` (the hub is shutting down): code 1001."""
        self._last = last
        self._stop()

    def drop(self, reason: str) -> None:
        """End now: it fell behind `reason` (and may be stuck sending)."""
        if not self._stopping:
            self._dropped = reason
            self._stop()

    def expire(self) -> None:
        if not self._stopping:
            self._expired = True
            self._stop()

    def look_after(self, now: float, ping_interval: float, send_timeout: float) -> None:
        """Cut it off if a send is stuck for `send_timeout` seconds (pings are the
        protocol's)."""
        since = self._sending_since
        if (
            since is not None
            and send_timeout
            and now - since >= send_timeout
            and not self._stopping
        ):
            self._cut_off = now - since
            self._stop()

    def _stop(self) -> None:
        if self._task is not None and not self._task.done() and not self._stopping:
            self._stopping = True
            self._task.cancel()

    # The connection's life.

    async def run(self, subscription: Subscription) -> None:
        hub, activity = self.hub, self.hub.activity
        self._task = asyncio.current_task()
        try:
            await self._send({"type": "websocket.accept"})
        except OSError:  # gone already
            hub.untrack(self)
            return
        hub.track(self)
        receiver = asyncio.ensure_future(self._read())
        expiry = None
        if self._access.expires is not None:
            expiry = asyncio.get_running_loop().call_later(
                max(self._access.expires - time.time(), 0.0), self.expire
            )
        try:
            chunk = b""
            async with aclosing(hub.frames(subscription, drop=self.drop)) as chunks:
                async for chunk in chunks:
                    for event, id, data in decode_frames(chunk):
                        text = message_of(event, id, data)
                        self._sending_since = time.monotonic()
                        await self._send({"type": "websocket.send", "text": text})
                        self._sending_since = None
                        activity.ws_bytes += len(text)
            if chunk.startswith(END):  # hub.end went out above
                await self._end(b"", ENDED, "every selected stream has ended")
            else:  # the broker is unavailable, or a shared producer stopped
                await self._end(b"", TRY_AGAIN_LATER, "the streams stopped: reconnect to resume")
        except Drop as drop:
            self._stopping = True
            activity.cut_off["overflow"] += 1
            logger.warning("cut off %s (%s): %s", self._who(), self._query(), drop.reason)
            await self._end(b"", TRY_AGAIN_LATER, drop.reason)  # hub.overflow went out above
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            if self._cut_off is not None:
                activity.cut_off["send_timeout"] += 1
                logger.warning(
                    "cut off %s (%s): it accepted no message for %.1f s (--send-timeout)",
                    self._who(),
                    self._query(),
                    self._cut_off,
                )
                self._abort()
            elif self._dropped is not None:
                activity.cut_off["overflow"] += 1
                logger.warning(
                    "cut off %s (%s): %s (--buffer)", self._who(), self._query(), self._dropped
                )
                overflow = control_body("overflow", reason=self._dropped)
                await self._end(overflow, TRY_AGAIN_LATER, self._dropped)
            elif self._expired:
                activity.cut_off["expired"] += 1
                expired = control_body(
                    "expired", reason="the token has expired; reconnect with a fresh one"
                )
                await self._end(expired, 4401, "the token has expired")
            elif not self._disconnected:
                await self._end(self._last, GOING_AWAY, "the hub is shutting down")
        except OSError:
            pass  # the client left in the middle of a send
        finally:
            if expiry is not None:
                expiry.cancel()
            receiver.cancel()
            hub.untrack(self)

    async def _send(self, message: Message) -> None:
        await self._send_to(message)

    async def _end(self, last: bytes, code: int, reason: str) -> None:
        """Send the messages of `last` and the close. Under the hub's protocol they go at
        once, after whatever is queued (the peer has `CLOSE_WITHIN` seconds to take them);
        under another server, through ASGI within `END_WITHIN` seconds. A client that does
        not take them in time is dropped."""
        self._closing = True
        texts = [message_of(*frame) for frame in decode_frames(last)]
        connection = self._connection
        if connection is not None:
            connection.close_now(texts, code, _reason(reason))
            return
        try:
            async with asyncio.timeout(END_WITHIN):
                for text in texts:
                    await self._send({"type": "websocket.send", "text": text})
                await self._send(
                    {"type": "websocket.close", "code": code, "reason": _reason(reason)}
                )
        except Exception:  # noqa: BLE001 - a timeout, or a connection that failed meanwhile
            return

    def _abort(self) -> None:
        if self._connection is not None:
            self._connection.abort()

    async def _read(self) -> None:
        """The client's messages: publishes, answered in order, until it leaves."""
        try:
            while True:
                message = await self._receive()
                if message["type"] == "websocket.disconnect":
                    self._disconnected = True
                    self._stop()
                    return
                if message["type"] != "websocket.receive":
                    continue
                text = message.get("text")
                if text is None:
                    text = (message.get("bytes") or b"").decode(errors="replace")
                answer = await self._publish(text)
                if self._closing:
                    return
                await self._send({"type": "websocket.send", "text": answer})
                self.hub.activity.ws_bytes += len(answer)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the connection failed: the sender finds out too
            return

    async def _publish(self, text: str) -> str:
        """The answer to one client message: a publish's positions, or its error."""
        ref: Any = None
        name: str | None = None
        try:
            payload = parse_json(text, "the message", _PUBLISH_SHAPE)
            if isinstance(payload, dict):
                ref = payload.get("ref")
                name = payload.get("publish") if isinstance(payload.get("publish"), str) else None
            _check_publish(payload)
            data = payload["data"]
            events = data if isinstance(data, list) else [data]
            topic, entries = await self.hub.publish_as(
                self._access, self.client or "unknown", payload["publish"], events
            )
        except RequestError as exc:
            self.hub.activity.refused[exc.code] += 1
            error: dict[str, Any] = {"error": exc.body()["error"]}
            if name is not None:
                error["publish"] = name
            if ref is not None:
                error["ref"] = ref
            return json.dumps(error, separators=(",", ":"), default=str)
        body = published_json(topic, [entry.position for entry in entries], published=topic)
        if ref is not None:
            body = body[:-1] + ',"ref":' + json.dumps(ref, separators=(",", ":")) + "}"
        return body

    def _who(self) -> str:
        client = self._scope.get("client") or ("?", 0)
        return f"{client[0]}:{client[1]}"

    def _query(self) -> str:
        query: bytes = self._scope.get("query_string", b"")
        return redact(query.decode(errors="replace"))[:200]


def _check_publish(payload: Any) -> None:
    if (
        not isinstance(payload, dict)
        or not isinstance(payload.get("publish"), str)
        or "data" not in payload
    ):
        raise RequestError(400, "invalid_message", f"not a publish: {_PUBLISH_SHAPE}")
    unknown = sorted(set(payload).difference(_PUBLISH_KEYS))
    if unknown:
        raise RequestError(
            400,
            "invalid_message",
            f"unknown key {', '.join(map(repr, unknown))} in a publish: {_PUBLISH_SHAPE}",
        )
