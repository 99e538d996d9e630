"""From query and cursor to a validated Subscription, or a RequestError."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from hub import Event, Registry, stream
from hub.subscription import RequestError, Subscription, parse_subscription, split_streams


class Item(Event):
    tag: str


@stream("tagged")
async def tagged(tags: list[str] = [], label: str = "") -> AsyncIterator[Item]:  # noqa: B006
    for tag in tags:
        yield Item(tag=label + tag)


@stream("needy")
async def needy(topic: str) -> AsyncIterator[Item]:
    yield Item(tag=topic)


BUILTINS = ["chat", "counter", "echo", "reverse_echo", "room/<key>"]


@pytest.fixture
def registry() -> Registry:
    registry = Registry.discover(entry_points=False)
    registry.add(tagged)
    registry.add(needy)
    return registry


def parse(
    registry: Registry,
    names: str,
    query: Sequence[tuple[str, str]] = (),
    cursor: str | None = None,
    **options: Any,
) -> Subscription:
    return parse_subscription(registry, split_streams([names]), query, cursor, **options)


def refused(
    registry: Registry, names: str, query: Sequence[tuple[str, str]] = (), **kw: Any
) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse(registry, names, query, **kw)
    return info.value


def arguments(subscription: Subscription) -> dict[str, dict[str, Any]]:
    return {s.name: s.arguments for s in subscription.selected}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], []),
        ([""], []),
        (["echo"], ["echo"]),
        (["echo,reverse_echo"], ["echo", "reverse_echo"]),
        (["echo", "counter,reverse_echo"], ["echo", "counter", "reverse_echo"]),
        ([" echo , ,counter,", ",,"], ["echo", "counter"]),
        (["echo,counter,echo", "counter"], ["echo", "counter"]),
    ],
)
def test_split_streams(values: list[str], expected: list[str]) -> None:
    assert split_streams(values) == expected


def test_selection_is_sorted_with_defaults(registry: Registry) -> None:
    subscription = parse(registry, "reverse_echo,echo,counter")
    assert subscription.names == ["counter", "echo", "reverse_echo"]
    assert arguments(subscription) == {
        "counter": {"start": 0, "interval": 1.0},
        "echo": {"message": "hello", "interval": 1.0},
        "reverse_echo": {"message": "hello", "interval": 1.0},
    }
    assert all(s.count is None and s.after is None for s in subscription.selected)
    assert subscription.start == {}
    assert subscription.selected[0].stream is registry["counter"]


def test_no_streams(registry: Registry) -> None:
    error = refused(registry, " , ")
    assert (error.status, error.code) == (400, "missing_streams")
    # Each stream by name; a keyed family as the form its topics take.
    named = [f"{d.name}/<key>" if d.keyed else d.name for d in registry]
    assert error.body()["error"]["available"] == named
    assert set(BUILTINS) <= set(error.body()["error"]["available"])


def test_too_many_streams(registry: Registry) -> None:
    error = refused(registry, "echo,reverse_echo,counter", max_streams=2)
    assert (error.status, error.code) == (400, "too_many_streams")
    assert error.body()["error"]["limit"] == 2
    assert parse(registry, "echo,reverse_echo", max_streams=2).names == ["echo", "reverse_echo"]


def test_unknown_streams(registry: Registry) -> None:
    error = refused(registry, "echo,nope,zzz")
    body = error.body()["error"]
    assert (error.status, error.code, body["code"]) == (404, "unknown_stream", "unknown_stream")
    assert body["unknown"] == ["nope", "zzz"]
    assert body["available"] == sorted(BUILTINS + ["needy", "tagged"])
    assert "'nope'" in body["message"] and "'zzz'" in body["message"]


def test_unscoped_parameter_goes_to_every_stream_declaring_it(registry: Registry) -> None:
    query = [("message", "hi"), ("interval", "0")]
    subscription = parse(registry, "echo,reverse_echo,counter", query)
    assert arguments(subscription) == {
        "counter": {"start": 0, "interval": 0.0},
        "echo": {"message": "hi", "interval": 0.0},
        "reverse_echo": {"message": "hi", "interval": 0.0},
    }


@pytest.mark.parametrize(
    "query",
    [
        [("message", "all"), ("echo.message", "mine")],
        [("echo.message", "mine"), ("message", "all")],
    ],
)
def test_scoped_parameter_wins_for_its_stream(
    registry: Registry, query: list[tuple[str, str]]
) -> None:
    subscription = parse(registry, "echo,reverse_echo", query)
    assert arguments(subscription)["echo"]["message"] == "mine"
    assert arguments(subscription)["reverse_echo"]["message"] == "all"


def test_scoped_parameter_only_reaches_its_stream(registry: Registry) -> None:
    subscription = parse(registry, "echo,reverse_echo", [("echo.message", "mine")])
    assert arguments(subscription)["reverse_echo"]["message"] == "hello"


def invalid(
    registry: Registry, names: str, query: Sequence[tuple[str, str]]
) -> list[dict[str, Any]]:
    error = refused(registry, names, query)
    assert (error.status, error.code) == (422, "invalid_parameters")
    errors: list[dict[str, Any]] = error.body()["error"]["errors"]
    for e in errors:
        assert f"{e['stream']}.{e['parameter']}" in error.message
    return errors


def test_parameter_no_selected_stream_declares(registry: Registry) -> None:
    (error,) = invalid(registry, "counter", [("message", "hi")])
    assert (error["stream"], error["parameter"], error["input"]) == ("counter", "message", "hi")
    assert "accepted: count, interval, start" in error["message"]


@pytest.mark.parametrize(
    ("query", "stream_name", "parameter"),
    [
        ([("reverse_echo.message", "x")], "reverse_echo", "message"),
        ([("echo.bogus", "1")], "echo", "bogus"),
        ([("interval", "-1")], "echo", "interval"),
        ([("interval", "abc")], "echo", "interval"),
        ([("echo.interval", "abc")], "echo", "interval"),
        ([("message", "a"), ("message", "b")], "echo", "message"),
        ([("count", "-1")], "echo", "count"),
        ([("echo.count", "x")], "echo", "count"),
    ],
)
def test_invalid_parameter(
    registry: Registry, query: list[tuple[str, str]], stream_name: str, parameter: str
) -> None:
    (error,) = invalid(registry, "echo", query)
    assert (error["stream"], error["parameter"]) == (stream_name, parameter)


def test_every_error_is_reported_at_once(registry: Registry) -> None:
    errors = invalid(
        registry,
        "echo,counter,needy",
        [
            ("echo.interval", "abc"),
            ("counter.start", "x"),
            ("bogus", "1"),
            ("message", "a"),
            ("message", "b"),
        ],
    )
    assert sorted((e["stream"], e["parameter"]) for e in errors) == [
        ("counter", "start"),
        ("counter,echo,needy", "bogus"),
        ("echo", "interval"),
        ("echo", "message"),
        ("needy", "topic"),
    ]


def test_required_parameter(registry: Registry) -> None:
    (error,) = invalid(registry, "needy", [])
    assert (error["stream"], error["parameter"], error["input"]) == ("needy", "topic", None)
    assert arguments(parse(registry, "needy", [("topic", "t")])) == {"needy": {"topic": "t"}}


def test_list_parameter_takes_every_value(registry: Registry) -> None:
    repeated = parse(registry, "tagged", [("tags", "a"), ("tags", "b")])
    assert arguments(repeated)["tagged"] == {"tags": ["a", "b"], "label": ""}
    assert arguments(parse(registry, "tagged", [("tags", "a")]))["tagged"]["tags"] == ["a"]
    scoped = parse(registry, "tagged", [("tags", "a"), ("tagged.tags", "b"), ("tagged.tags", "c")])
    assert arguments(scoped)["tagged"]["tags"] == ["b", "c"]


def test_count_applies_to_every_stream_and_can_be_scoped(registry: Registry) -> None:
    everywhere = parse(registry, "echo,counter", [("count", "3")])
    assert [(s.name, s.count) for s in everywhere.selected] == [("counter", 3), ("echo", 3)]
    assert all("count" not in s.arguments for s in everywhere.selected)
    scoped = parse(registry, "echo,counter", [("count", "5"), ("echo.count", "1")])
    assert [(s.name, s.count) for s in scoped.selected] == [("counter", 5), ("echo", 1)]


def test_cursor_resumes_the_selected_streams(registry: Registry) -> None:
    subscription = parse(registry, "counter,echo", cursor="counter:4,echo:-")
    assert [(s.name, s.after) for s in subscription.selected] == [("counter", 4), ("echo", None)]
    assert isinstance(subscription.selected[0].after, int)
    assert subscription.start == {"counter": "4", "echo": None}


def test_cursor_streams_not_selected_are_ignored(registry: Registry) -> None:
    cursor = "counter:7,gone:abc,reverse_echo:3"
    subscription = parse(registry, "counter,echo", cursor=cursor)
    assert subscription.start == {"counter": "7"}
    assert [(s.name, s.after) for s in subscription.selected] == [("counter", 7), ("echo", None)]
    assert parse(registry, "echo", cursor="counter:7").start == {}


@pytest.mark.parametrize("cursor", ["", "   "])
def test_empty_cursor_is_no_cursor(registry: Registry, cursor: str) -> None:
    subscription = parse(registry, "counter", cursor=cursor)
    assert subscription.start == {} and subscription.selected[0].after is None


@pytest.mark.parametrize("cursor", ["garbage", "counter:1,counter:2", "counter:1,", ":1"])
def test_malformed_cursor(registry: Registry, cursor: str) -> None:
    error = refused(registry, "counter", cursor=cursor)
    assert (error.status, error.code) == (400, "malformed_cursor")
    assert error.body()["error"]["cursor"] == cursor


@pytest.mark.parametrize("position", ["abc", "-1", "1.5", "0-1", "１", " 1x"])
def test_non_integer_position_of_a_generated_stream(registry: Registry, position: str) -> None:
    error = refused(registry, "counter,echo", cursor=f"echo:-,counter:{position}")
    assert (error.status, error.code) == (400, "malformed_cursor")
    assert "'counter'" in error.message
