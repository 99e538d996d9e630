"""Property-based tests (hypothesis): the SSE encoding round-trips, and hostile input is a 4xx.

1. Encoder and parser, pure: whatever text an event, a parameter or an id holds, the frames the
   hub's encoder makes come back through httpx-sse's own line and event decoders exactly (event
   name, JSON data, id, count), however the bytes are split on the way; where the encoder
   refuses a value (a line break in an id or an event name), it raises ValueError instead of
   writing a frame that would read back as something else.
2. End to end, a real `hub serve`: any `message` comes back exactly in `echo`'s data.
3. Fuzz of `Last-Event-ID`, of query strings, of paths and methods, and of publish bodies against
   that server: never a 5xx; every error is JSON `{"error": {"code", "message", ...}}`; the
   contract's specific answers (414 `uri_too_long` for a request target over 8 KiB, 415
   `unsupported_media_type` for a publish that is not `application/json`, 422 for duplicate keys
   in an event); and no traceback or ERROR in the server's log afterwards.

Examples are few (the server tests make one or two requests each) and the hypothesis database
is off, so the file runs in well under a minute and leaves nothing behind.
"""

from __future__ import annotations

import codecs
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import hypothesis.core
import pytest
from httpx_sse import EventSource, ServerSentEvent
from httpx_sse._decoders import SSEDecoder, SSELineDecoder
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.vendor import pretty

from hub import Event
from hub.cursor import format_cursor, parse_cursor
from hub.events import control_body, encode_body, encode_event, encode_frame, event_prefix
from hub.testing import HubServer

PURE = settings(max_examples=300, deadline=None, database=None)
SERVED = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TIMEOUT = httpx.Timeout(10.0)
MAX_TARGET = 8192  # a longer request target is a 414


@pytest.fixture(autouse=True, scope="module")
def readable_failures() -> Iterator[None]:
    """Failing examples printed with their values.

    schemathesis's pytest plugin (installed with the test extra) swaps hypothesis's printer of
    failing examples for one that prints nothing, for the speed of its own runs, in every test
    of the session; this module puts the real one back while it runs.
    """
    saved = hypothesis.core.RepresentationPrinter
    hypothesis.core.RepresentationPrinter = pretty.RepresentationPrinter  # type: ignore[misc]
    yield
    hypothesis.core.RepresentationPrinter = saved  # type: ignore[misc]


# --- text that tries to break frames ---------------------------------------------------------

TRICKY = [
    "",
    "\n",
    "\r",
    "\r\n",
    "\n\r",
    "\n\n",
    "\0",
    "data: x",
    "\ndata: {}\n",
    "\r\nid: 99\r\n",
    "\nevent: hub.end\n\n",
    "id: 1",
    "event: x",
    "retry: 1",
    ":",
    ": comment",
    " ",
    "\t",
    "\x0b\x0c\x1c\x1d\x1e",
    "\x85",  # NEL: a line break for str.splitlines, not for SSE
    "\u2028\u2029",
    "\ufeff",
    "é",
    "😀",
    '"',
    "\\",
    "%",
    "%0A",
    ",",
    "echo:1",
]

texts = st.one_of(
    st.text(),
    st.lists(st.one_of(st.sampled_from(TRICKY), st.text(max_size=4)), max_size=12).map("".join),
)


def _no_breaks(text: str) -> str:
    return text.replace("\r", "").replace("\n", "")


LINE_BREAK = re.compile(r"\r\n|\r|\n")

# Event names as the hub writes them never hold a line break; otherwise anything, but not empty
# (an SSE reader gives an event with an empty name the name "message").
names = texts.map(_no_breaks).filter(bool)
# Positions in a cursor: anything on one line, NUL aside (an id holding NUL is tested alone).
positions = st.one_of(st.none(), texts.map(_no_breaks).map(lambda s: s.replace("\0", "")))
ids = st.one_of(
    st.none(),
    st.dictionaries(st.text(), positions, max_size=4).map(format_cursor),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)


class Fuzzed(Event):
    text: str
    tags: list[str]
    attributes: dict[str, str]
    number: int


fuzzed_events = st.builds(
    Fuzzed,
    text=texts,
    tags=st.lists(texts, max_size=3),
    attributes=st.dictionaries(texts, texts, max_size=3),
    number=st.integers(-(2**63), 2**63),
)

# --- the frames and what a reader must get back ------------------------------------------------

Expected = tuple[str, Callable[[str], Any], Any, str | None]  # event, read data, data, id


@st.composite
def frames(draw: st.DrawFn) -> tuple[bytes, Expected]:
    """One frame of any kind the hub writes, and the event a reader must see for it."""
    kind = draw(st.sampled_from(["model", "json", "text", "control"]))
    if kind == "control":
        control = draw(names)
        # Any keys but `kind`, which is control_body's own parameter.
        data = draw(st.dictionaries(texts.filter(lambda k: k != "kind"), json_values, max_size=4))
        return control_body(control, **data), ("hub." + control, json.loads, data, None)
    name = draw(names)
    id = draw(ids)
    if kind == "model":
        event = draw(fuzzed_events)
        body = encode_event(event_prefix(name), event)
        expected: Expected = (name, json.loads, event.model_dump(mode="json"), id)
    elif kind == "json":
        value = draw(json_values)
        indent = draw(st.sampled_from([None, 2]))  # indented JSON spans several data: lines
        body = encode_body(name, json.dumps(value, ensure_ascii=False, indent=indent))
        expected = (name, json.loads, value, id)
    else:
        text = draw(texts)
        body = encode_body(name, text)
        # Documented: each line becomes a data: line, which readers join back with "\n".
        expected = (name, str, LINE_BREAK.sub("\n", text), id)
    return encode_frame(body, id), expected


def read_with_httpx_sse(chunks: list[bytes]) -> list[ServerSentEvent]:
    """What httpx-sse makes of these chunks: its own decoders, fed as `iter_sse` feeds them."""
    text = codecs.getincrementaldecoder("utf-8")()
    lines = SSELineDecoder()
    events = SSEDecoder()
    received = []

    def decode(line: str) -> None:
        sse = events.decode(line)
        if sse is not None:
            received.append(sse)

    for chunk in chunks:
        piece = text.decode(chunk)
        if piece:
            for line in lines.decode(piece):
                decode(line)
    tail = text.decode(b"", final=True)
    for line in (lines.decode(tail) if tail else []) + lines.flush():
        decode(line)
    return received


def split(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(raw)) for cut in cuts})
    return [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]


# --- 1. the encoder and httpx-sse's parser ----------------------------------------------------


@PURE
@given(st.lists(frames(), min_size=1, max_size=8), st.data())
def test_any_text_in_events_and_ids_round_trips_through_httpx_sse(
    stream: list[tuple[bytes, Expected]], data: st.DataObject
) -> None:
    raw = b"".join(frame for frame, _ in stream)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=16), label="cuts")
    received = read_with_httpx_sse(split(raw, cuts))
    assert len(received) == len(stream), (received, raw)
    last_id = ""  # a reader's last event id carries over frames that set none
    for sse, (_, (event, read, value, id)) in zip(received, stream, strict=True):
        if id is not None:
            last_id = id
        assert sse.event == event
        assert read(sse.data) == value
        assert sse.id == last_id


@PURE
@given(st.dictionaries(st.text(), st.one_of(st.none(), st.text()), max_size=5), texts)
def test_a_line_break_in_an_id_is_refused_not_written(
    positions: dict[str, str | None], broken: str
) -> None:
    """An id is one line: a break inside would end it early and inject whatever follows."""
    position = broken if LINE_BREAK.search(broken) else broken + "\n"
    cursor = format_cursor({**positions, "stream": position})
    with pytest.raises(ValueError):
        encode_frame(b"event: x\ndata: {}\n\n", cursor)
    with pytest.raises(ValueError):
        encode_frame(b"event: x\ndata: {}\n\n", position)


@PURE
@given(texts)
def test_a_line_break_in_an_event_name_is_refused_not_written(text: str) -> None:
    broken = text if LINE_BREAK.search(text) else text + "\r"
    with pytest.raises(ValueError):
        encode_body(broken, "{}")
    with pytest.raises(ValueError):
        event_prefix(broken)
    with pytest.raises(ValueError):
        control_body(broken, reason="x")


@PURE
@given(texts.map(_no_breaks))
@example("\0")
@example("echo:1\0")
def test_an_id_either_reads_back_exactly_or_is_refused(id: str) -> None:
    """A reader ignores an `id:` holding NUL (WHATWG; httpx-sse and browsers alike), keeping its
    previous id: such a frame would silently resume from an older position."""
    frame = b"id: 0\nevent: a\ndata: 1\n\n"
    try:
        frame += encode_frame(b"event: b\ndata: 2\n\n", id)
    except ValueError:
        return
    received = read_with_httpx_sse([frame])
    assert [sse.id for sse in received] == ["0", id]


@PURE
@given(st.text(alphabet=st.characters(categories=["Cs", "Ll", "Zs"])))
def test_text_that_is_not_utf8_is_refused_not_written(text: str) -> None:
    """Lone surrogates cannot be written as UTF-8: a ValueError, never a frame."""
    for encode in (
        lambda: encode_body("name", text),
        lambda: encode_event(
            event_prefix("name"), Fuzzed(text=text, tags=[], attributes={}, number=0)
        ),
        lambda: control_body("error", error=text),
    ):
        try:
            raw = encode()
        except ValueError:
            continue
        received = read_with_httpx_sse([raw])
        assert len(received) == 1


@PURE
@given(
    st.dictionaries(
        st.text(min_size=1),
        st.one_of(
            st.none(),
            st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._~:-]{0,63}", fullmatch=True),
        ),
        max_size=16,
    )
)
def test_a_cursor_reads_back_as_it_was_written(cursor: dict[str, str | None]) -> None:
    assert parse_cursor(format_cursor(cursor)) == cursor


# --- a real hub for the rest -------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[HubServer]:
    with HubServer() as hub:
        yield hub


@pytest.fixture(scope="module")
def client(server: HubServer) -> Iterator[httpx.Client]:
    # Idle connections are dropped after 1 s, well before the hub closes them (--keep-alive,
    # 5 s): with httpx's default of 5 s too, a request could go out on a connection the hub
    # was closing at that moment, and come back as a connection reset.
    limits = httpx.Limits(keepalive_expiry=1.0)
    with httpx.Client(base_url=server.url, timeout=TIMEOUT, limits=limits) as client:
        yield client


class LogWatch:
    """The server's log since a point: it must hold no traceback and no ERROR line."""

    def __init__(self, server: HubServer) -> None:
        self.server = server
        self.start = len(server.lines)

    def assert_clean(self) -> None:
        time.sleep(0.3)  # the log is read by a thread: let the last lines arrive
        lines = self.server.lines[self.start :]
        problems = [
            line
            for line in lines
            if "Traceback" in line or line.startswith("ERROR") or "Exception in ASGI" in line
        ]
        assert not problems, "the server logged:\n" + "".join(lines)[-4000:]


def assert_error_shape(response: httpx.Response, body: bytes) -> dict[str, Any]:
    """A refusal: JSON `{"error": {"code": str, "message": str, ...}}`, never a server error."""
    assert response.status_code < 500, (response.status_code, body[:300])
    media = response.headers.get("content-type", "").split(";")[0].strip()
    assert media == "application/json", (response.status_code, response.headers, body[:300])
    payload = json.loads(body)
    assert isinstance(payload, dict) and set(payload) == {"error"}, payload
    error = payload["error"]
    assert isinstance(error, dict), payload
    assert isinstance(error.get("code"), str) and error["code"], payload
    assert isinstance(error.get("message"), str) and error["message"], payload
    return error


def answer(
    client: httpx.Client,
    method: str,
    url: str,
    **kwargs: Any,
) -> tuple[httpx.Response, bytes]:
    """Send one request; for a stream, the head and its first chunk only, then close."""
    with client.stream(method, url, **kwargs) as response:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            body = next(response.iter_raw(), b"")
        else:
            body = response.read()
    return response, body


def check(response: httpx.Response, body: bytes) -> dict[str, Any] | None:
    """Never a 5xx; a stream starts with the retry hint; every 4xx is a JSON error, which is
    returned."""
    assert response.status_code < 500, (response.status_code, body[:300])
    if response.status_code < 300:
        media = response.headers.get("content-type", "")
        if media.startswith("text/event-stream"):
            assert body.startswith(b"retry:"), body[:300]
        elif media.startswith("application/json"):
            json.loads(body)
        return None
    if response.status_code < 400:
        return None
    return assert_error_shape(response, body)


def target_length(response: httpx.Response) -> int:
    return len(response.request.url.raw_path)


def assert_uri_too_long(response: httpx.Response, body: bytes) -> None:
    error = assert_error_shape(response, body)
    assert (response.status_code, error["code"]) == (414, "uri_too_long"), (
        f"a request target of {target_length(response)} bytes",
        response.status_code,
        body[:300],
    )


# --- 2. parameters end to end ------------------------------------------------------------------


def test_any_message_comes_back_exactly_from_echo(server: HubServer, client: httpx.Client) -> None:
    watch = LogWatch(server)

    @SERVED
    @given(texts)
    @example("")
    @example("line\nbreak\r\nand\rreturns")
    @example("\0 NUL and data: lookalike\n\ndata: {}")
    @example("+ & = ? # % %20 %zz ;")
    def round_trip(message: str) -> None:
        params = {"streams": "echo", "count": "1", "message": message}
        with client.stream("GET", "/events", params=params) as response:
            assert response.status_code == 200, response.read()
            events = [sse for sse in EventSource(response).iter_sse() if sse.data]
        assert [sse.event for sse in events] == ["echo", "hub.end"]
        assert events[0].json()["message"] == message
        assert events[0].id == "echo:0"

    round_trip()
    watch.assert_clean()


def first_event(client: httpx.Client, streams: str, cursor: str) -> ServerSentEvent:
    params = {"streams": streams, "count": "1", "interval": "0"}
    headers = {"Last-Event-ID": cursor}
    with client.stream("GET", "/events", params=params, headers=headers) as response:
        assert response.status_code == 200, (cursor, response.read())
        return next(sse for sse in EventSource(response).iter_sse() if sse.data)


def test_every_id_the_hub_sends_is_taken_back(server: HubServer, client: httpx.Client) -> None:
    """A client resumes with the last id it received: the hub never refuses an id it sent,
    however far a generated stream has counted."""
    watch = LogWatch(server)

    @SERVED
    @given(
        st.integers(0, 10**18 - 1),
        st.sampled_from(["echo", "counter", "echo,reverse_echo"]),
    )
    @example(10**18 - 1, "echo")
    @example(10**18 - 1, "counter")
    def resume(position: int, streams: str) -> None:
        cursor = ",".join(f"{name}:{position}" for name in streams.split(","))
        sent = first_event(client, streams, cursor)
        again = first_event(client, streams, sent.id)
        assert again.id != sent.id

    resume()
    watch.assert_clean()


# --- 3. fuzz of cursors, queries, paths and bodies ---------------------------------------------

# Header values HTTP can carry: visible latin-1 (obs-text included), inner spaces and tabs.
header_chars = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")
stream_names = st.sampled_from(
    ["echo", "reverse_echo", "counter", "chat", "nope", "ECHO", "", "%65cho", "echo%2C", "é"]
    # Keyed topics: good keys, bad keys, no key, a key where none is taken.
    + ["room/lobby", "room/Lobby~2", "room", "room/", "room//x", "room/a.b", "room/é"]
    + ["room/" + "k" * 129, "echo/x", "nope/x", "room/lobby/x", "/room", "room%2Flobby"]
)
cursor_positions = st.one_of(
    st.sampled_from(["-", "0", "", "-1", "+1", "1.5", "1e3", "%00", "１", " 1", "0x1f"]),
    st.integers(1, 5000).map(lambda n: "9" * n),
    st.text(alphabet="0123456789abc.-_~%:,", max_size=80),
    st.text(header_chars, max_size=40),
)
cursor_parts = st.tuples(
    st.one_of(stream_names, st.text(header_chars, max_size=20)), cursor_positions
)
cursors = st.one_of(
    st.text(header_chars, max_size=300),
    st.lists(cursor_parts, max_size=6).map(lambda parts: ",".join(f"{n}:{p}" for n, p in parts)),
    st.tuples(
        st.sampled_from(["a", "9", ",", ":", "%", "echo:1,", "%zz"]), st.integers(1, 10_500)
    ).map(lambda pair: pair[0] * (pair[1] // len(pair[0]))),
    st.integers(1, 5000).map(lambda n: "echo:" + "9" * n),
).map(lambda s: s.strip(" \t"))


def test_any_last_event_id_is_a_stream_or_a_json_4xx(
    server: HubServer, client: httpx.Client
) -> None:
    watch = LogWatch(server)

    @SERVED
    @given(
        cursors,
        st.sampled_from(
            ["echo", "echo,counter", "chat,echo", "chat,counter,reverse_echo", "room/a,room/b"]
        ),
        st.sampled_from(["header", "query"]),
    )
    @example("echo:" + "9" * 5000, "echo", "header")
    @example("echo:" + "9" * 5000, "echo", "query")
    @example("a" * 10_000, "echo", "header")
    @example("chat:" + "9" * 5000, "chat,echo", "header")
    @example("%%%,:::,,,", "echo", "header")
    @example("echo:1,echo:2", "echo", "header")
    @example("," * 9000, "echo", "query")  # a request target over 8 KiB
    def fuzz(cursor: str, streams: str, where: str) -> None:
        params = {"streams": streams, "count": "1"}
        headers = {}
        if where == "header" and all(c == "\t" or 0x20 <= ord(c) <= 0xFF for c in cursor):
            headers["Last-Event-ID"] = cursor.encode("latin-1")
        else:  # the query carries what a header cannot
            params["last_event_id"] = cursor
        response, body = answer(client, "GET", "/events", params=params, headers=headers)
        error = check(response, body)
        if target_length(response) > MAX_TARGET:
            assert_uri_too_long(response, body)
        elif error is not None:
            assert response.status_code == 400 and error["code"] == "malformed_cursor", error

    fuzz()
    watch.assert_clean()


query_keys = st.one_of(
    st.sampled_from(
        [
            "streams",
            "count",
            "message",
            "interval",
            "start",
            "last_event_id",
            "echo.message",
            "echo.count",
            "echo.interval",
            "counter.start",
            "chat.count",
            "reverse_echo.message",
            "nope.x",
            "",
            ".",
            "echo.",
            ".message",
            "_x",
            "count.echo",
        ]
    ),
    st.text(max_size=20),
)
query_values = st.one_of(
    st.sampled_from(
        ["", "0", "1", "-1", "nan", "inf", "-inf", "1e999", "0.01", "%", "%00", ",,,", "true"]
    ),
    st.integers(1, 5000).map(lambda n: "9" * n),
    st.text(max_size=40),
)
odd_streams = st.lists(
    st.one_of(
        stream_names,
        st.sampled_from(["hub.end", "a" * 65, "echo.x", "\0", " echo ", "echo,echo", "*"]),
        st.text(max_size=12),
    ),
    min_size=1,
    max_size=20,
).map(",".join)
huge = st.tuples(
    st.sampled_from(["message", "echo.message", "x", "streams"]),
    st.integers(1000, 9000),
    st.sampled_from(["a", "é", "%", " "]),
).map(lambda t: (t[0], t[2] * t[1]))


def test_any_query_is_a_stream_or_a_json_4xx(server: HubServer, client: httpx.Client) -> None:
    watch = LogWatch(server)

    @SERVED
    @given(
        st.lists(st.tuples(st.just("streams"), odd_streams), max_size=2),
        st.lists(st.tuples(query_keys, query_values), max_size=6),
        st.one_of(st.none(), huge),
    )
    @example([("streams", "echo")], [("count", "9" * 5000)], None)
    @example([("streams", "echo")], [("count", "1")], ("message", "a" * 9000))
    @example([("streams", "echo,nope")], [("message", "x"), ("message", "y")], None)
    @example([], [("count", "1")], ("streams", "a" * 9000))
    def fuzz(
        streams: list[tuple[str, str]],
        pairs: list[tuple[str, str]],
        big: tuple[str, str] | None,
    ) -> None:
        params = [*streams, *pairs, *([big] if big else [])]
        response, body = answer(client, "GET", "/events", params=params)
        error = check(response, body)
        if target_length(response) > MAX_TARGET:
            assert_uri_too_long(response, body)
        elif error is not None:  # the refusals /events documents
            assert response.status_code in (400, 404, 422), (response.status_code, error)

    fuzz()
    watch.assert_clean()


def test_a_request_target_over_8_kib_is_a_json_414(client: httpx.Client) -> None:
    for size in (
        8193,
        9000,
        60_000,
    ):  # httpx sends no query over 64 KiB (80 KB: raw socket in test_hardening.py)
        message = "a" * (size - len("/events?streams=echo&count=1&message="))
        response, body = answer(
            client, "GET", "/events", params={"streams": "echo", "count": "1", "message": message}
        )
        assert target_length(response) == size
        assert_uri_too_long(response, body)


def test_a_client_that_leaves_mid_body_leaves_no_traceback(server: HubServer) -> None:
    """A publish whose body stops short, or is not valid chunked encoding, and whose client
    then goes away: a JSON 400 where an answer is due, and nothing in the log but a line."""
    head = b"POST /streams/chat/events HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json\r\n"
    watch = LogWatch(server)
    for framing, body in [
        (b"Content-Length: 100\r\n", b'{"user":"a"'),  # 11 of 100 bytes, then gone
        (b"Transfer-Encoding: chunked\r\n", b'5\r\n{"use'),  # half a chunk, then gone
    ]:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as connection:
            connection.sendall(head + framing + b"\r\n" + body)
            time.sleep(0.3)  # the hub is waiting for the rest
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as connection:
        connection.sendall(head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    watch.assert_clean()
    status, _, rest = answer.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert status.split(b" ")[1] == b"400", answer[:300]
    assert b"content-type: application/json" in headers.lower(), answer[:300]
    assert json.loads(body)["error"]["code"], answer[:300]


methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
paths = st.one_of(
    st.sampled_from(
        [
            "/",
            "/nope",
            "/events/",
            "/EVENTS",
            "/streams/",
            "/streams/nope",
            "/streams/chat/events",
            "/streams/echo/events",
            "/streams/chat/events/x",
            "/streams/room",
            "/streams/room/lobby",
            "/streams/room/lobby/events",
            "/streams/room/a.b/events",
            "/streams/room/%2e%2e/events",
            "/streams/room/%2F/events",
            "/streams/echo/x/events",
            "/streams/echo/x",
            "/health",
            "/openapi.json",
            "/%2e%2e/etc/passwd",
            "/streams/%00",
            "/streams/%FF",
        ]
    ),
    # Never "//...", which a client reads as another host.
    st.text(max_size=40).map(lambda s: "/" + quote(s.lstrip("/"), safe="/")),
)


def test_any_path_and_method_answers_in_the_hub_error_shape(
    server: HubServer, client: httpx.Client
) -> None:
    """Unknown routes and methods too: the hub's JSON error, not FastAPI's `{"detail": ...}`."""
    watch = LogWatch(server)

    @SERVED
    @given(methods, paths)
    @example("GET", "/nope")
    @example("POST", "/health")
    @example("GET", "/streams/chat/events")
    @example("OPTIONS", "/events")
    @example("DELETE", "/events")
    def fuzz(method: str, path: str) -> None:
        content = b'{"user":"fuzz","text":"x"}' if method in ("POST", "PUT", "PATCH") else None
        headers = {"Content-Type": "application/json"} if content else {}
        response, body = answer(client, method, path, content=content, headers=headers)
        if 300 <= response.status_code < 400:
            assert "location" in response.headers
            return
        check(response, body)

    fuzz()
    watch.assert_clean()


# --- publish bodies ----------------------------------------------------------------------------

JSON_TYPES = ["application/json", "application/json; charset=utf-8", "Application/JSON"]
OTHER_TYPES = [
    None,
    "",
    "text/plain",
    "text/plain; charset=utf-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/xml",
    "application/octet-stream",
    "application/jsonx",
    "text/json",
    "json",
]
# Neither clearly JSON nor clearly not: only the general contract applies to them.
UNDECIDED_TYPES = ["application/problem+json", "application/json; charset=utf-16"]


def _deep(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    if kind == "in-a-field":
        return b'{"user":"u","text":' + b"[" * depth + b"]" * depth + b"}"
    return b"[" * depth  # never closed


def _duplicated(pairs: list[tuple[str, Any]], key: str) -> bytes:
    fields = [*pairs, (key, "again")]
    return ("{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in fields) + "}").encode()


chat_like = st.fixed_dictionaries(
    {},
    optional={
        "user": st.one_of(st.text(max_size=20), json_values),
        "text": st.one_of(st.text(max_size=20), json_values),
        "received_at": st.one_of(st.just("2020-01-01T00:00:00Z"), json_values),
        "extra": json_values,
    },
)
surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)

# (body, what the contract says of it beyond "a JSON 4xx or a 201")
bodies = st.one_of(
    json_values.map(lambda v: (json.dumps(v).encode(), None)),
    chat_like.map(lambda v: (json.dumps(v).encode(), None)),
    st.lists(chat_like, max_size=4).map(lambda v: (json.dumps(v).encode(), None)),
    st.tuples(
        st.integers(1, 20_000), st.sampled_from(["array", "object", "in-a-field", "open"])
    ).map(lambda t: (_deep(*t), None)),
    st.binary(max_size=200).map(lambda b: (b, None)),
    st.tuples(surrogates, st.sampled_from(["user", "text"])).map(
        lambda t: (json.dumps({"user": "u", "text": "t", t[1]: t[0]}).encode(), None)
    ),
    st.tuples(
        st.permutations([("user", "u"), ("text", "t")]), st.sampled_from(["user", "text"])
    ).map(lambda t: (_duplicated(list(t[0]), t[1]), "duplicate")),
    st.sampled_from(
        [
            b'{"user":"a","text":NaN}',
            b'{"user":"a","text":"b","x":Infinity}',
            b"-Infinity",
            b'{"user":"a","text":1e999}',
            b'{"user":"a","text":' + b"9" * 5000 + b"}",
            b"\xef\xbb\xbf{}",
            b'{"user":"\xff","text":"b"}',
            b"",
            b"null",
            b"[]",
        ]
    ).map(lambda b: (b, None)),
)


def test_any_publish_body_is_a_201_or_a_json_4xx(server: HubServer, client: httpx.Client) -> None:
    watch = LogWatch(server)

    @SERVED
    @given(bodies, st.sampled_from(JSON_TYPES + OTHER_TYPES + UNDECIDED_TYPES))
    @example((b"[" * 10_000 + b"]" * 10_000, None), "application/json")
    @example((b'{"a":' * 10_000 + b"1" + b"}" * 10_000, None), "application/json")
    @example((b'{"user":"\\ud800","text":"b"}', None), "application/json")
    @example((b'{"user":"a","user":"b","text":"c"}', "duplicate"), "application/json")
    @example((b'{"user":"a","text":"b"}', None), "text/plain")
    @example((b'{"user":"a","text":"b"}', None), None)
    @example((b'{"user":"a","text":"b"}', None), "application/x-www-form-urlencoded")
    def fuzz(body: tuple[bytes, str | None], content_type: str | None) -> None:
        content, expectation = body
        headers = {} if content_type is None else {"Content-Type": content_type}
        response, answered = answer(
            client, "POST", "/streams/chat/events", content=content, headers=headers
        )
        error = check(response, answered)
        if content_type in OTHER_TYPES:
            assert error is not None and (response.status_code, error["code"]) == (
                415,
                "unsupported_media_type",
            ), (response.status_code, answered[:300])
        elif content_type in JSON_TYPES and expectation == "duplicate":
            assert response.status_code == 422, (response.status_code, answered[:300])
        if response.status_code == 201:
            assert set(json.loads(answered)) >= {"positions", "ids"}

    fuzz()
    watch.assert_clean()
