"""`/ws`: the subscription of `/events` as JSON messages, and publishing on the same socket.

Every test talks to a real `hub serve` through a real WebSocket client (websockets), or, where
the frames themselves matter (pings, a reader that stalls), through a raw socket driven by
websockets' sans-I/O client protocol.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support import TIMEOUT, get, publish_chat, room
from test_auth import KEY, PLUGIN, mint
from test_hardening import wait_until
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Opcode
from websockets.sync.client import ClientConnection, connect
from websockets.uri import parse_uri

from hub.testing import HubServer, parse_events


def ws_url(server: HubServer, query: str = "") -> str:
    return server.url.replace("http://", "ws://") + "/ws" + (f"?{query}" if query else "")


def receive(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    message = ws.recv(timeout=timeout)
    assert isinstance(message, str)
    parsed: dict[str, Any] = json.loads(message)
    return parsed


def messages_until_closed(ws: ClientConnection) -> list[dict[str, Any]]:
    received = []
    try:
        while True:
            received.append(receive(ws))
    except ConnectionClosed:
        return received


def sse_events(server: HubServer, params: dict[str, Any]) -> list[dict[str, Any]]:
    """The same subscription over SSE, as the messages /ws would give."""
    response = httpx.get(f"{server.url}/events", params=params, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return [
        # a control event has no id of its own (an SSE reader carries the last one over)
        {"event": e.event, "data": json.loads(e.data)}
        if e.event.startswith("hub.")
        else {"event": e.event, "id": e.id, "data": json.loads(e.data)}
        for e in parse_events(response.text)
    ]


# --- the same events and ids as SSE --------------------------------------------------------


def test_the_same_events_and_ids_as_sse_for_the_same_selection(hub_server: HubServer) -> None:
    lobby = room()
    ids = publish_chat(hub_server, lobby, "one", "two", "three")
    query = f"streams={lobby}&last_event_id={ids[0]}&count=2"
    with connect(ws_url(hub_server, query)) as ws:
        first = receive(ws)
        received = messages_until_closed(ws)
    assert first == {"id": ids[0]}  # the starting cursor, as the SSE response's first frame
    expected = sse_events(hub_server, {"streams": lobby, "last_event_id": ids[0], "count": 2})
    assert received == expected
    assert received[-1] == {"event": "hub.end", "data": {"streams": [lobby]}}
    assert [m["id"] for m in received[:-1]] == ids[1:]
    assert [m["data"]["text"] for m in received[:-1]] == ["two", "three"]


def test_a_merged_selection_over_ws_and_sse_resumes_every_stream(hub_server: HubServer) -> None:
    kitchen, lobby = room(), room()
    k = publish_chat(hub_server, kitchen, "k1", "k2", "k3")
    l_ = publish_chat(hub_server, lobby, "l1", "l2")
    selection = f"{kitchen},{lobby},counter"
    start = ",".join(sorted([k[0], l_[0]]))  # each topic after its first event
    params = {"streams": selection, "last_event_id": start, "count": 1, "interval": 0}
    with connect(ws_url(hub_server, str(httpx.QueryParams(params)))) as ws:
        over_ws = messages_until_closed(ws)[1:]
    over_sse = sse_events(hub_server, params)
    assert over_ws.pop()["event"] == over_sse.pop()["event"] == "hub.end"

    def per_stream(messages: list[dict[str, Any]]) -> dict[str, list[Any]]:
        streams: dict[str, list[Any]] = {}
        for m in messages:
            streams.setdefault(m["event"], []).append(m["data"])
        return streams

    assert per_stream(over_ws) == per_stream(over_sse)
    assert sorted(per_stream(over_ws)) == sorted([kitchen, lobby, "counter"])
    assert [d["text"] for d in per_stream(over_ws)[kitchen]] == ["k2"]
    assert over_ws[-1]["id"] == over_sse[-1]["id"]  # the same cursor after the same events
    # Resume from the WebSocket's last id: each topic replays what followed, exactly.
    publish_chat(hub_server, kitchen, "k4")
    resumed = sse_events(
        hub_server, {"streams": kitchen, "last_event_id": over_ws[-1]["id"], "count": 2}
    )
    assert [m["data"].get("text") for m in resumed] == ["k3", "k4", None]  # then hub.end


def test_it_resumes_with_last_event_id(hub_server: HubServer) -> None:
    lobby = room()
    ids = publish_chat(hub_server, lobby, "a", "b", "c", "d")
    with connect(ws_url(hub_server, f"streams={lobby}&last_event_id={ids[0]}")) as ws:
        receive(ws)
        seen = receive(ws)
    assert seen["data"]["text"] == "b"
    with connect(ws_url(hub_server, f"streams={lobby}&last_event_id={seen['id']}")) as ws:
        assert receive(ws) == {"id": seen["id"]}
        assert [receive(ws)["data"]["text"] for _ in range(2)] == ["c", "d"]
    # A Last-Event-ID header wins over the query, as on /events.
    url = ws_url(hub_server, f"streams={lobby}&last_event_id={ids[0]}")
    with connect(url, additional_headers={"Last-Event-ID": ids[2]}) as ws:
        assert receive(ws) == {"id": ids[2]}
        assert receive(ws)["data"]["text"] == "d"


# --- publishing on the socket --------------------------------------------------------------


def test_it_publishes_and_sees_its_own_message_arrive(hub_server: HubServer) -> None:
    lobby = room()
    with connect(ws_url(hub_server, f"streams={lobby}")) as ws:
        start = receive(ws)["id"]
        message = {"user": "ana", "text": "hello"}
        ws.send(json.dumps({"publish": lobby, "data": message, "ref": 1}))
        got = [receive(ws), receive(ws)]
        answer = next(m for m in got if "published" in m)
        event = next(m for m in got if "event" in m)
        assert answer["published"] == lobby and answer["ref"] == 1
        assert answer["ids"] == [event["id"]] and event["id"] != start
        assert event["event"] == lobby and event["data"]["text"] == "hello"
        # A batch, all or none, with one position each.
        ws.send(json.dumps({"publish": lobby, "data": [message, message]}))
        got = [receive(ws) for _ in range(3)]
        assert len(next(m for m in got if "published" in m)["positions"]) == 2


@pytest.mark.parametrize(
    ("message", "status", "code", "names"),
    [
        ({"publish": "{room}", "data": {"user": "ana"}}, 422, "invalid_events", "text"),
        ({"publish": "{room}", "data": {"user": "a", "text": "t", "x": 1}}, 422, None, "x"),
        ({"publish": "nope", "data": {}}, 404, "unknown_stream", "nope"),
        ({"publish": "echo", "data": {}}, 405, "not_publishable", "echo"),
        ({"publish": "room", "data": {}}, 422, "invalid_key", "room"),
        ({"data": {}}, 400, "invalid_message", "publish"),
        ({"publish": "{room}", "data": {}, "extra": 1}, 400, "invalid_message", "extra"),
        ("{not json", 400, "malformed_json", "not JSON"),
        ('{"publish": "a", "publish": "b", "data": {}}', 422, "invalid_events", "twice"),
    ],
)
def test_a_bad_publish_gets_the_error_of_post_and_the_socket_goes_on(
    hub_server: HubServer, message: Any, status: int, code: str | None, names: str
) -> None:
    lobby = room()
    text = message if isinstance(message, str) else json.dumps(message)
    text = text.replace("{room}", lobby)
    with connect(ws_url(hub_server, f"streams={lobby}")) as ws:
        receive(ws)
        ws.send(text)
        error = receive(ws)["error"]
        assert names in error["message"]
        if code is not None:
            assert error["code"] == code
        if not text.startswith("{not") and "twice" not in names:
            # The same error as POST /streams/{name}/events gives for the same body.
            payload = json.loads(text)
            if "publish" in payload and "data" in payload and set(payload) <= {"publish", "data"}:
                posted = httpx.post(
                    f"{hub_server.url}/streams/{payload['publish']}/events",
                    json=payload["data"],
                    timeout=TIMEOUT,
                )
                assert posted.status_code == status
                assert posted.json()["error"] == error
        ws.send(json.dumps({"publish": lobby, "data": {"user": "ana", "text": "still here"}}))
        got = [receive(ws), receive(ws)]
        assert any(m.get("published") == lobby for m in got)


# --- refusals, before the handshake --------------------------------------------------------


REFUSED = [
    "",  # no streams: 400
    "streams=nope",  # 404
    "streams=room",  # a family without a key: 422
    "streams=echo&nope=1",  # 422
    "streams=echo&interval=-1",  # 422
    "streams=echo&last_event_id=echo:x",  # 400
    "streams=" + ",".join(f"room/k{i}" for i in range(17)),  # 400 too many
]


@pytest.mark.parametrize("query", REFUSED)
def test_every_refusal_happens_before_the_handshake(hub_server: HubServer, query: str) -> None:
    refused = get(hub_server, "/events?" + query)
    assert refused.status_code >= 400
    with pytest.raises(InvalidStatus) as raised:
        connect(ws_url(hub_server, query))
    response = raised.value.response
    assert response.status_code == refused.status_code
    assert json.loads(response.body or b"") == refused.json()
    assert response.headers["content-type"] == "application/json"


def test_a_page_of_another_site_is_refused(hub_server: HubServer) -> None:
    with pytest.raises(InvalidStatus) as raised:
        connect(ws_url(hub_server, "streams=echo"), origin="https://evil.example")  # type: ignore[arg-type]
    assert raised.value.response.status_code == 403
    assert json.loads(raised.value.response.body or b"")["error"]["code"] == "origin_not_allowed"
    # A page of the hub's own origin is let in.
    with connect(ws_url(hub_server, "streams=echo"), origin=hub_server.url) as ws:  # type: ignore[arg-type]
        assert "id" in receive(ws)


def test_no_websocket_on_another_path_and_no_plain_get_of_ws(hub_server: HubServer) -> None:
    with pytest.raises(InvalidStatus) as raised:
        connect(hub_server.url.replace("http", "ws") + "/events?streams=echo")
    assert raised.value.response.status_code == 404
    plain = get(hub_server, "/ws?streams=echo")
    assert plain.status_code == 426 and plain.json()["error"]["code"] == "upgrade_required"


@pytest.fixture(scope="module")
def secured() -> Iterator[HubServer]:
    args = ["--no-builtin-streams", "--no-entry-points", "--auth-leeway", "0"]
    args += ["--max-connections-per-client", "2", "--ping-interval", "0.5"]
    with HubServer(PLUGIN, args=args, env={"HUB_AUTH_KEY": KEY}) as server:
        yield server


def test_authorization_and_limits_refuse_before_the_handshake(secured: HubServer) -> None:
    cases = {
        "streams=room": 401,  # no token
        f"streams=room&access_token={mint(subscribe=['news'])}": 403,
        "streams=room&access_token=not-a-token": 401,
    }
    for query, status in cases.items():
        with pytest.raises(InvalidStatus) as raised:
            connect(ws_url(secured, query))
        response = raised.value.response
        assert response.status_code == status, query
        assert json.loads(response.body or b"") == get(secured, "/events?" + query).json()
    token = mint(subscribe=["room"])
    # The per-client limit counts WebSockets and SSE responses alike: 429, Retry-After.
    with connect(ws_url(secured, f"streams=room&access_token={token}")) as one:
        with connect(ws_url(secured, f"streams=room&access_token={token}")) as two:
            receive(one), receive(two)
            with pytest.raises(InvalidStatus) as raised:
                connect(ws_url(secured, f"streams=room&access_token={token}"))
            assert raised.value.response.status_code == 429
            assert "retry-after" in raised.value.response.headers
    health = wait_until(lambda: get(secured, "/health").json()["clients"] == 0, 5)
    assert health >= 0


def test_an_expiring_token_ends_the_socket_with_hub_expired_and_4401(secured: HubServer) -> None:
    token = mint(subscribe=["room"], expires_in=2)
    with connect(ws_url(secured, f"streams=room&access_token={token}")) as ws:
        receive(ws)
        received = messages_until_closed(ws)
        assert received[-1]["event"] == "hub.expired"
        assert ws.close_code == 4401


def test_publishing_on_the_socket_needs_a_grant(secured: HubServer) -> None:
    reader = mint(subscribe=["room"])
    with connect(ws_url(secured, f"streams=room&access_token={reader}")) as ws:
        receive(ws)
        ws.send(json.dumps({"publish": "room", "data": {"text": "hi"}}))
        assert receive(ws)["error"]["code"] == "forbidden"
    writer = mint(subscribe=["room"], publish=["room"])
    with connect(ws_url(secured, f"streams=room&access_token={writer}")) as ws:
        receive(ws)
        ws.send(json.dumps({"publish": "room", "data": {"text": "hi"}}))
        got = [receive(ws), receive(ws)]
        assert any(m.get("published") == "room" for m in got)


# --- keep-alive, slow consumers, shutdown --------------------------------------------------


class RawSocket:
    """A WebSocket client over a plain socket, frames parsed by websockets' sans-I/O
    protocol: it reads only when told to, as a stalled client does."""

    def __init__(self, server: HubServer, query: str, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", server.port))
        self.protocol = ClientProtocol(parse_uri(ws_url(server, query)), max_size=None)
        self.protocol.send_request(self.protocol.connect())
        self.flush()
        self.frames: list[Any] = []
        while self.protocol.handshake_exc is None and not self._accepted():
            self.read()
        assert self.protocol.handshake_exc is None, self.protocol.handshake_exc

    def _accepted(self) -> bool:
        return any(getattr(e, "status_code", None) == 101 for e in self.frames)

    def flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)

    def read(self) -> bool:
        """Read what is there; False at the end of the connection."""
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        self.frames += self.protocol.events_received()
        self.flush()  # pongs, the close reply
        return bool(data)

    def texts(self) -> list[dict[str, Any]]:
        return [
            json.loads(f.data) for f in self.frames if getattr(f, "opcode", None) == Opcode.TEXT
        ]

    def close(self) -> None:
        self.sock.close()


def test_protocol_pings_keep_the_socket_alive(hub_server: HubServer) -> None:
    client = RawSocket(hub_server, "streams=chat")  # a quiet stream: nothing but pings
    try:
        deadline = time.monotonic() + 5
        while not any(getattr(f, "opcode", None) == Opcode.PING for f in client.frames):
            assert time.monotonic() < deadline, "no ping within 5 s (--ping-interval 0.5)"
            client.read()
    finally:
        client.close()


def test_sockets_are_counted_in_the_connection_limit_and_released() -> None:
    # An upgrade used to leave the HTTP connection's count behind for good: enough
    # WebSocket handshakes, even refused ones, and the hub answered everyone 503.
    with HubServer() as server:
        for query in ["streams=echo", "streams=nope", ""] * 10:
            try:
                with connect(ws_url(server, query)) as ws:
                    receive(ws)
            except InvalidStatus:
                pass
        wait_until(lambda: get(server, "/health").json()["connections"] == 1, 5)


def test_a_client_that_answers_no_ping_is_dropped() -> None:
    with HubServer(args=["--ping-interval", "0.5", "--send-timeout", "1"]) as server:
        client = RawSocket(server, "streams=chat")  # it never reads again: no pong
        try:
            wait_until(lambda: get(server, "/health").json()["subscriptions"] == 1, 5)
            wait_until(lambda: get(server, "/health").json()["subscriptions"] == 0, 10)
            assert get(server, "/health").json()["clients"] == 0
        finally:
            client.close()


def test_a_slow_consumer_is_cut_off_with_1013_and_the_others_keep_up() -> None:
    args = ["--buffer", "20", "--send-timeout", "30", "--ping-interval", "0"]
    with HubServer(args=args) as server:
        stalled = RawSocket(server, "streams=chat", rcvbuf=4096)
        with connect(ws_url(server, "streams=chat")) as keeping_up:
            receive(keeping_up)
            text = "x" * 20_000
            sent = 0
            for _ in range(40):  # bounded: the stalled one is cut off long before
                events = [{"user": "ana", "text": text}] * 10
                httpx.post(f"{server.url}/streams/chat/events", json=events, timeout=TIMEOUT)
                sent += 10
                for _ in range(10):
                    assert receive(keeping_up)["data"]["text"] == text
                if "cut off" in server.output:
                    break
            wait_until(lambda: "cut off" in server.output, 10)
            # It reads again: what was queued, then hub.overflow and the close, 1013.
            while stalled.read():
                pass
            stalled.close()
            messages = stalled.texts()
            assert messages[-1]["event"] == "hub.overflow"
            close = stalled.protocol.close_rcvd
            assert close is not None and close.code == 1013
            assert "behind" in close.reason or "buffer" in close.reason or close.reason
            health = get(server, "/health").json()
            assert health["subscriptions"] == 1  # the one that kept up
        lines = [line for line in server.output.splitlines() if "cut off" in line]
        assert lines and lines[0].startswith("WARNING")
        assert "Traceback" not in server.output and "ERROR" not in server.output


def test_at_shutdown_a_socket_gets_hub_shutdown_and_1001() -> None:
    with HubServer(args=["--shutdown-grace", "3"]) as server:
        with connect(ws_url(server, "streams=chat")) as ws:
            receive(ws)
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            received = messages_until_closed(ws)
            assert [m["event"] for m in received] == ["hub.shutdown"]
            assert ws.close_code == 1001
        assert server.wait(10) == 0
        assert time.monotonic() - started < 3
        assert "Traceback" not in server.output and "ERROR" not in server.output
