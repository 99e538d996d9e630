"""Cursors: the `id:` of every frame, `name:position` per selected stream."""

from __future__ import annotations

import pytest

from hub.cursor import NOTHING_YET, CursorError, CursorWriter, format_cursor, parse_cursor


@pytest.mark.parametrize(
    ("positions", "expected"),
    [
        pytest.param({}, "", id="empty"),
        pytest.param({"echo": "3"}, "echo:3", id="one"),
        pytest.param({"reverse_echo": "1", "echo": "3"}, "echo:3,reverse_echo:1", id="sorted"),
        pytest.param({"b": None, "a": "0"}, "a:0,b:-", id="nothing-yet"),
        pytest.param({"t": "0-1:5"}, "t:0-1:5", id="position-with-colon"),
        pytest.param({"a,b": "1"}, "a%2Cb:1", id="comma-in-name"),
        pytest.param({"a:b": "1"}, "a%3Ab:1", id="colon-in-name"),
        pytest.param({"a%b": "1"}, "a%25b:1", id="percent-in-name"),
        pytest.param({"é": None}, "%C3%A9:-", id="unicode-name"),
    ],
)
def test_format_cursor(positions: dict[str, str | None], expected: str) -> None:
    assert format_cursor(positions) == expected


def test_format_cursor_is_independent_of_insertion_order() -> None:
    assert format_cursor({"c": "1", "a": "2", "b": None}) == format_cursor(
        {"a": "2", "b": None, "c": "1"}
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", {}, id="empty"),
        pytest.param("   ", {}, id="blank"),
        pytest.param("echo:3", {"echo": "3"}, id="one"),
        pytest.param("echo:-", {"echo": None}, id="nothing-yet"),
        pytest.param("a:1,b:-", {"a": "1", "b": None}, id="two"),
        pytest.param("t:0-1:5", {"t": "0-1:5"}, id="split-at-first-colon"),
        pytest.param("t::", {"t": ":"}, id="position-is-a-colon"),
        pytest.param("t:--", {"t": "--"}, id="only-a-lone-dash-is-none"),
        pytest.param(" a:1 , b:- ", {"a": "1", "b": None}, id="whitespace-around-parts"),
        pytest.param("a%2Cb:1,a%3Ab:2", {"a,b": "1", "a:b": "2"}, id="quoted-names"),
        pytest.param("b:2,a:1", {"b": "2", "a": "1"}, id="unsorted-accepted"),
    ],
)
def test_parse_cursor(text: str, expected: dict[str, str | None]) -> None:
    assert parse_cursor(text) == expected


@pytest.mark.parametrize(
    "positions",
    [
        {"echo": "3", "reverse_echo": None},
        {"t": "1700000000000-0:42", "counter": "0"},
        {"a,b": "1", "a:b": None, "100%": "7"},
        {"日本": "5"},
    ],
)
def test_format_then_parse_round_trips(positions: dict[str, str | None]) -> None:
    text = format_cursor(positions)
    assert parse_cursor(text) == positions
    assert format_cursor(parse_cursor(text)) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("echo", "stream:position", id="missing-colon"),
        pytest.param("echo:1,counter", "stream:position", id="missing-colon-second"),
        pytest.param(":1", "stream:position", id="empty-name"),
        pytest.param("echo:", "stream:position", id="empty-position"),
        pytest.param("echo:1,echo:2", "appears twice", id="duplicate"),
        pytest.param("echo:1,echo:-", "appears twice", id="duplicate-nothing-yet"),
        pytest.param("a%2Cb:1,a%2cb:2", "appears twice", id="duplicate-after-unquoting"),
        pytest.param("echo:1,", "stream:position", id="trailing-comma"),
        pytest.param(",echo:1", "stream:position", id="leading-comma"),
        pytest.param("a:1,,b:2", "stream:position", id="empty-part"),
    ],
)
def test_parse_cursor_rejects_malformed_text(text: str, message: str) -> None:
    with pytest.raises(CursorError, match=message):
        parse_cursor(text)


def test_cursor_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_cursor("nonsense")


def test_writer_starts_from_the_start_positions() -> None:
    writer = CursorWriter(["reverse_echo", "echo", "counter"], {"echo": "4", "gone": "9"})
    assert writer.names == ["counter", "echo", "reverse_echo"]
    assert writer.current() == "counter:-,echo:4,reverse_echo:-"
    assert writer.current() == format_cursor({"counter": None, "echo": "4", "reverse_echo": None})


def test_writer_without_start_has_nothing_yet_everywhere() -> None:
    writer = CursorWriter(["b", "a"], {})
    assert writer.current() == f"a:{NOTHING_YET},b:{NOTHING_YET}"


def test_writer_advance_changes_exactly_one_slot() -> None:
    writer = CursorWriter(["a", "b", "c"], {"b": "7"})
    positions: dict[str, str | None] = {"a": None, "b": "7", "c": None}
    steps = [("c", "0"), ("a", "0"), ("c", "1"), ("b", "8"), ("c", "2:x")]
    for name, position in steps:
        before = parse_cursor(writer.current())
        cursor = writer.advance(writer.index(name), position)
        after = parse_cursor(cursor)
        changed = {key for key in after if after[key] != before[key]}
        assert changed == {name}
        positions[name] = position
        assert cursor == format_cursor(positions)
        assert writer.current() == cursor


def test_writer_quotes_names_like_format_cursor() -> None:
    writer = CursorWriter(["a:b", "a,b"], {"a,b": "1"})
    assert writer.current() == format_cursor({"a:b": None, "a,b": "1"})
    cursor = writer.advance(writer.index("a:b"), "2")
    assert cursor == format_cursor({"a:b": "2", "a,b": "1"})
    assert parse_cursor(cursor) == {"a:b": "2", "a,b": "1"}


def test_writer_index_of_an_unselected_stream_raises() -> None:
    with pytest.raises(ValueError):
        CursorWriter(["a"], {}).index("b")
