"""The built-in streams, tested the way a plugin author tests theirs: with hub.testing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hub.testing import acollect, collect
from streams.counter import counter
from streams.echo import echo


def test_echo_repeats_its_message_with_the_time_it_was_made() -> None:
    before = datetime.now(UTC)
    events = collect("echo", 3, params={"message": "hi there", "interval": 0})
    assert [e.event for e in events] == ["echo"] * 3
    assert [e.id for e in events] == ["echo:0", "echo:1", "echo:2"]
    stamps = [datetime.fromisoformat(e.json()["created_at"]) for e in events]
    assert all(e.json()["message"] == "hi there" for e in events)
    assert before <= stamps[0] <= stamps[1] <= stamps[2] <= datetime.now(UTC)


def test_reverse_echo_reverses_unicode_by_character() -> None:
    events = collect("reverse_echo", 2, params={"message": "añb ✓日", "interval": 0})
    assert [e.json()["message"] for e in events] == ["日✓ bña"] * 2


def test_echo_waits_its_interval_between_events() -> None:
    events = collect("echo", 3, params={"interval": 0.05})
    stamps = [datetime.fromisoformat(e.json()["created_at"]) for e in events]
    gaps = [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:], strict=False)]
    assert all(gap >= 0.045 for gap in gaps), gaps


def test_echo_and_reverse_echo_merge_with_cursor_ids() -> None:
    events = collect("echo,reverse_echo", 4, params={"message": "ab", "count": 2})
    assert sorted((e.event, e.json()["message"]) for e in events) == [
        ("echo", "ab"),
        ("echo", "ab"),
        ("reverse_echo", "ba"),
        ("reverse_echo", "ba"),
    ]
    assert events[-1].id == "echo:1,reverse_echo:1"


def test_counter_resumes_exactly_after_its_last_position() -> None:
    first = collect("counter", 3, params={"start": 10, "interval": 0})
    assert [e.json()["n"] for e in first] == [10, 11, 12]
    resumed = collect("counter", 2, params={"start": 10, "interval": 0}, last_event_id=first[-1].id)
    assert [(e.id, e.json()["n"]) for e in resumed] == [("counter:3", 13), ("counter:4", 14)]


@pytest.mark.anyio
async def test_streams_can_be_passed_as_objects() -> None:
    events = await acollect([echo, counter], 4, params={"interval": 0, "count": 2})
    assert sorted(e.event for e in events) == ["counter", "counter", "echo", "echo"]


@pytest.mark.anyio
async def test_the_generators_stay_callable_for_direct_tests() -> None:
    generator = echo(message="direct", interval=0)
    first = await anext(generator)
    await generator.aclose()
    assert first.message == "direct"
