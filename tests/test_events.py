"""The SSE wire form, byte for byte."""

from __future__ import annotations

from typing import Any

import pytest

from hub.events import (
    CONTROL_PREFIX,
    control_body,
    encode_body,
    encode_comment,
    encode_frame,
    encode_retry,
)
from hub.testing import parse_events


@pytest.mark.parametrize(
    ("event", "data", "expected"),
    [
        pytest.param("echo", '{"m":"hi"}', b'event: echo\ndata: {"m":"hi"}\n\n', id="json"),
        pytest.param("e", "a\nb\nc", b"event: e\ndata: a\ndata: b\ndata: c\n\n", id="lf"),
        pytest.param("e", "a\r\nb", b"event: e\ndata: a\ndata: b\n\n", id="crlf"),
        pytest.param("e", "a\rb", b"event: e\ndata: a\ndata: b\n\n", id="cr"),
        pytest.param("e", "a\r\rb", b"event: e\ndata: a\ndata: \ndata: b\n\n", id="cr-cr"),
        pytest.param("e", "a\n\nb", b"event: e\ndata: a\ndata: \ndata: b\n\n", id="blank-line"),
        pytest.param("e", "a\n", b"event: e\ndata: a\ndata: \n\n", id="trailing-lf"),
        pytest.param("e", "", b"event: e\ndata: \n\n", id="empty"),
        pytest.param("e", "café", b"event: e\ndata: caf\xc3\xa9\n\n", id="accent"),
        pytest.param("e", "日本", b"event: e\ndata: \xe6\x97\xa5\xe6\x9c\xac\n\n", id="cjk"),
        pytest.param("e", "🎉", b"event: e\ndata: \xf0\x9f\x8e\x89\n\n", id="emoji"),
        pytest.param("e", " lead", b"event: e\ndata:  lead\n\n", id="leading-space"),
        pytest.param("e", ": not a comment", b"event: e\ndata: : not a comment\n\n", id="colon"),
        pytest.param("hub.gap", "{}", b"event: hub.gap\ndata: {}\n\n", id="dotted-event"),
    ],
)
def test_encode_body(event: str, data: str, expected: bytes) -> None:
    assert encode_body(event, data) == expected


@pytest.mark.parametrize(
    ("id", "expected"),
    [
        pytest.param(None, b"event: e\ndata: x\n\n", id="no-id"),
        pytest.param("echo:3", b"id: echo:3\nevent: e\ndata: x\n\n", id="one-stream"),
        pytest.param(
            "a:1,b:-,t:0-1:5",
            b"id: a:1,b:-,t:0-1:5\nevent: e\ndata: x\n\n",
            id="comma-and-colons",
        ),
        pytest.param("", b"id: \nevent: e\ndata: x\n\n", id="empty-id"),
        pytest.param("é:1", b"id: \xc3\xa9:1\nevent: e\ndata: x\n\n", id="unicode-id"),
    ],
)
def test_encode_frame(id: str | None, expected: bytes) -> None:
    assert encode_frame(encode_body("e", "x"), id) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", b": \n\n", id="empty"),
        pytest.param("ping", b": ping\n\n", id="ping"),
        pytest.param("a\nb", b": a\n: b\n\n", id="lf"),
        pytest.param("a\r\nb\rc", b": a\n: b\n: c\n\n", id="crlf-cr"),
        pytest.param("ünï", b": \xc3\xbcn\xc3\xaf\n\n", id="unicode"),
    ],
)
def test_encode_comment(text: str, expected: bytes) -> None:
    assert encode_comment(text) == expected


@pytest.mark.parametrize(
    ("milliseconds", "expected"),
    [(0, b"retry: 0\n\n"), (1500, b"retry: 1500\n\n"), (3_600_000, b"retry: 3600000\n\n")],
)
def test_encode_retry(milliseconds: int, expected: bytes) -> None:
    assert encode_retry(milliseconds) == expected


@pytest.mark.parametrize(
    ("kind", "data", "expected"),
    [
        pytest.param("gap", {}, b"event: hub.gap\ndata: {}\n\n", id="no-data"),
        pytest.param(
            "error",
            {"stream": "echo", "error": "boom"},
            b'event: hub.error\ndata: {"stream":"echo","error":"boom"}\n\n',
            id="compact-ordered",
        ),
        pytest.param(
            "error",
            {"stream": "e", "error": "a\nb"},
            b'event: hub.error\ndata: {"stream":"e","error":"a\\nb"}\n\n',
            id="escaped-newline",
        ),
        pytest.param(
            "overflow",
            {"reason": "café 日本"},
            b'event: hub.overflow\ndata: {"reason":"caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac"}\n\n',
            id="unicode-not-escaped",
        ),
        pytest.param(
            "gap",
            {"stream": "t", "requested": 3, "resumed_from": None},
            b'event: hub.gap\ndata: {"stream":"t","requested":3,"resumed_from":null}\n\n',
            id="numbers-and-null",
        ),
        pytest.param(
            "error",
            {"error": ValueError("bad")},
            b'event: hub.error\ndata: {"error":"bad"}\n\n',
            id="non-json-as-str",
        ),
    ],
)
def test_control_body(kind: str, data: dict[str, Any], expected: bytes) -> None:
    assert control_body(kind, **data) == expected
    assert expected.startswith(b"event: " + CONTROL_PREFIX.encode())


@pytest.mark.parametrize("event", ["a\nb", "a\rb", "a\r\nb", "trailing\n"])
def test_encode_body_rejects_a_line_break_in_the_event_name(event: str) -> None:
    with pytest.raises(ValueError, match="event"):
        encode_body(event, "x")


@pytest.mark.parametrize("id", ["a:1\nevent: forged", "a:1\r", "\r\nb:2"])
def test_encode_frame_rejects_a_line_break_in_the_id(id: str) -> None:
    with pytest.raises(ValueError, match="id"):
        encode_frame(encode_body("e", "x"), id)


def test_control_body_rejects_a_line_break_in_the_kind() -> None:
    with pytest.raises(ValueError):
        control_body("gap\ndata: forged")


@pytest.mark.parametrize("milliseconds", [-1, True, False, 1.5, 1000.0, "1000", None])
def test_encode_retry_rejects_anything_but_a_non_negative_int(milliseconds: Any) -> None:
    with pytest.raises(ValueError, match="retry"):
        encode_retry(milliseconds)


@pytest.mark.parametrize(
    ("event", "data", "id"),
    [
        ("echo", '{"message":"hi"}', "echo:0"),
        ("multi", "first\nsecond\n\nfourth", "a:1,b:-"),
        ("multi", "trailing\n", None),
        ("unicode", '{"m":"café 日本 🎉"}', "é:1,t:0-1:5"),
        ("lead", "  two spaces", "x:9"),
        ("empty", "", "e:-"),
    ],
)
def test_encoded_frame_round_trips_through_the_parser(
    event: str, data: str, id: str | None
) -> None:
    (received,) = parse_events(encode_frame(encode_body(event, data), id))
    assert (received.event, received.data, received.id) == (event, data, id)


def test_crlf_and_cr_data_are_read_back_as_lf() -> None:
    (received,) = parse_events(encode_frame(encode_body("e", "a\r\nb\rc"), "e:1"))
    assert received.data == "a\nb\nc"


def test_several_frames_and_control_events_parse_in_order() -> None:
    raw = (
        encode_retry(1500)
        + encode_frame(encode_body("a", "1"), "a:0,b:-")
        + encode_comment("ping")
        + encode_frame(control_body("error", stream="b", error="x"), "a:0,b:-")
        + encode_frame(encode_body("b", "2"), "a:0,b:0")
    )
    assert [(e.event, e.data, e.id) for e in parse_events(raw)] == [
        ("a", "1", "a:0,b:-"),
        ("hub.error", '{"stream":"b","error":"x"}', "a:0,b:-"),
        ("b", "2", "a:0,b:0"),
    ]
