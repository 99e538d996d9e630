"""hub.brokers.memory: positions, history bounds, replay then live, gaps, overflow, interrupt."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from hub.brokers import (
    BrokerSubscription,
    Entry,
    Interrupted,
    Overflow,
    TopicConfig,
    broker_from_url,
)
from hub.brokers.memory import MemoryBroker

pytestmark = pytest.mark.anyio

EPOCH = "ep0001"


def make(history: int = 1000, max_age: float | None = None) -> MemoryBroker:
    broker = MemoryBroker(epoch=EPOCH)
    broker.declare("news", TopicConfig(history=history, max_age=max_age))
    return broker


def pos(seq: int) -> str:
    return f"{EPOCH}.{seq}"


def items(n: int, start: int = 1) -> list[str]:
    return [json.dumps({"n": i}) for i in range(start, start + n)]


async def take(reader: BrokerSubscription, n: int) -> list[str]:
    return [(await reader.__anext__()).position for _ in range(n)]


async def test_positions_count_up_from_the_epoch() -> None:
    broker = make()
    assert await broker.last_position("news") == pos(0)
    assert await broker.bounds("news") is None
    entries = await broker.publish("news", items(2))
    entries += await broker.publish("news", items(1, start=3))
    assert [e.position for e in entries] == [pos(1), pos(2), pos(3)]
    assert await broker.last_position("news") == pos(3)
    assert await broker.bounds("news") == (pos(1), pos(3))


async def test_entries_are_encoded_once_and_shared_by_every_subscriber() -> None:
    broker = make()
    first = await broker.subscribe("news", pos(0), 10)
    second = await broker.subscribe("news", pos(0), 10)
    [entry] = await broker.publish("news", ['{"n":1}'])
    assert entry.body == b'event: news\ndata: {"n":1}\n\n'
    assert entry.solo == b"id: news:" + pos(1).encode() + b"\n" + entry.body
    assert entry == Entry.encode("news", pos(1), '{"n":1}')
    assert await first.__anext__() is entry
    assert await second.__anext__() is entry


async def test_history_is_bounded_by_count() -> None:
    broker = make(history=3)
    await broker.publish("news", items(5))
    assert await broker.bounds("news") == (pos(3), pos(5))


async def test_history_is_bounded_by_age(monkeypatch: pytest.MonkeyPatch) -> None:
    # A clock that runs with real time but jumps forward when told to: the broker sees
    # exact ages, and the event loop (which reads the same clock) never sees time go back.
    real = time.monotonic
    offset = [0.0]
    monkeypatch.setattr("hub.brokers.memory.time.monotonic", lambda: real() + offset[0])
    broker = make(history=100, max_age=10)
    await broker.publish("news", items(2))
    offset[0] += 6
    await broker.publish("news", items(2, start=3))
    assert await broker.bounds("news") == (pos(1), pos(4))
    offset[0] += 5  # the first two are now 11 s old, the others 5 s
    assert await broker.bounds("news") == (pos(3), pos(4))
    reader = await broker.subscribe("news", pos(0), 10)
    assert reader.gap is not None and reader.gap.resumed_from == pos(3)
    assert await take(reader, 2) == [pos(3), pos(4)]
    offset[0] += 10
    assert await broker.bounds("news") is None
    assert await broker.last_position("news") == pos(4)


async def test_subscribing_at_the_newest_gets_live_events_in_order() -> None:
    broker = make()
    await broker.publish("news", items(2))
    reader = await broker.subscribe("news", await broker.last_position("news"), 10)
    assert reader.gap is None
    await broker.publish("news", items(2, start=3))
    await broker.publish("news", items(1, start=5))
    assert await take(reader, 3) == [pos(3), pos(4), pos(5)]


async def test_replay_then_live_without_gap_or_duplicate_at_the_seam() -> None:
    broker = make()
    await broker.publish("news", items(5))
    reader = await broker.subscribe("news", pos(2), 10)
    await broker.publish("news", items(1, start=6))
    assert reader.gap is None
    assert await take(reader, 4) == [pos(3), pos(4), pos(5), pos(6)]
    assert reader.buffered == 0
    await broker.publish("news", items(1, start=7))
    assert await take(reader, 1) == [pos(7)]


async def test_events_published_during_replay_come_after_it_exactly_once() -> None:
    broker = make()
    await broker.publish("news", items(5))
    reader = await broker.subscribe("news", pos(2), 10)
    got = await take(reader, 1)
    await broker.publish("news", items(1, start=6))
    got += await take(reader, 1)
    await broker.publish("news", items(2, start=7))
    got += await take(reader, 4)
    assert got == [pos(n) for n in range(3, 9)]
    assert reader.buffered == 0


async def test_gap_when_the_position_was_trimmed_away() -> None:
    broker = make(history=3)
    await broker.publish("news", items(10))
    reader = await broker.subscribe("news", pos(1), 10)
    assert reader.gap is not None
    assert (reader.gap.requested, reader.gap.resumed_from) == (pos(1), pos(8))
    assert await take(reader, 3) == [pos(8), pos(9), pos(10)]
    just_lost = await broker.subscribe("news", pos(6), 10)  # pos(7) was trimmed
    assert just_lost.gap is not None and just_lost.gap.resumed_from == pos(8)


@pytest.mark.parametrize("foreign", ["other1.5", "zzzzzz.3", "zzzzzz.0"])
async def test_gap_for_a_position_of_another_epoch(foreign: str) -> None:
    broker = make(history=3)
    await broker.publish("news", items(10))
    reader = await broker.subscribe("news", foreign, 10)
    assert reader.gap is not None
    assert (reader.gap.requested, reader.gap.resumed_from) == (foreign, pos(8))
    assert await take(reader, 3) == [pos(8), pos(9), pos(10)]


async def test_gap_for_a_position_of_another_broker() -> None:
    broker, earlier = make(), MemoryBroker(epoch="old001")
    [old] = await earlier.publish("news", items(1))
    await broker.publish("news", items(2))
    reader = await broker.subscribe("news", old.position, 10)
    assert reader.gap is not None and reader.gap.requested == old.position
    assert await take(reader, 2) == [pos(1), pos(2)]


async def test_no_gap_right_before_the_oldest_retained() -> None:
    broker = make(history=3)
    await broker.publish("news", items(10))
    reader = await broker.subscribe("news", pos(7), 10)
    assert reader.gap is None
    assert await take(reader, 3) == [pos(8), pos(9), pos(10)]


async def test_a_position_beyond_the_newest_resumes_at_the_newest() -> None:
    broker = make()
    await broker.publish("news", items(5))
    reader = await broker.subscribe("news", pos(99), 10)
    assert reader.gap is None
    await broker.publish("news", items(1, start=6))
    assert await take(reader, 1) == [pos(6)]


def test_check_position_accepts_ours() -> None:
    MemoryBroker().check_position("abc123.17")


@pytest.mark.parametrize("bad", ["", ".1", "a b", "a,1", "x" * 65, "é.1"])
async def test_ill_formed_positions_are_refused(bad: str) -> None:
    broker = make()
    with pytest.raises(ValueError, match="expected a topic position"):
        broker.check_position(bad)
    with pytest.raises(ValueError, match="expected a topic position"):
        await broker.subscribe("news", bad, 10)


@pytest.mark.parametrize("foreign", ["1795272069791-0", "abc", "ABC.1", "a.1.2"])
async def test_another_brokers_position_is_a_gap_with_everything_retained(foreign: str) -> None:
    broker = make()
    await broker.publish("news", items(3))
    broker.check_position(foreign)  # well formed: not refused
    reader = await broker.subscribe("news", foreign, 10)
    assert reader.gap is not None
    assert (reader.gap.requested, reader.gap.resumed_from) == (foreign, pos(1))
    assert await take(reader, 3) == [pos(1), pos(2), pos(3)]


async def test_overflow_cuts_the_slow_subscriber_off_and_frees_its_backlog() -> None:
    broker = make()
    slow = await broker.subscribe("news", pos(0), 3)
    for n in range(1, 5):  # the publish being delivered, and 3 more waiting
        await broker.publish("news", items(1, start=n))
    assert broker.buffered() == (4, 4)
    await broker.publish("news", items(1, start=5))
    assert slow.buffered == 0 and broker.buffered() == (0, 0)
    with pytest.raises(Overflow):
        await slow.__anext__()
    await broker.publish("news", items(5, start=5))
    assert slow.buffered == 0 and broker.buffered() == (0, 0)
    with pytest.raises(Overflow):
        await slow.__anext__()


async def test_a_slow_subscriber_does_not_affect_another() -> None:
    broker = make()
    slow = await broker.subscribe("news", pos(0), 3)
    fast = await broker.subscribe("news", pos(0), 100)
    for n in range(1, 7):
        await broker.publish("news", items(1, start=n))
    assert broker.buffered() == (6, 6)
    with pytest.raises(Overflow):
        await slow.__anext__()
    assert await take(fast, 6) == [pos(n) for n in range(1, 7)]


async def test_a_reader_that_keeps_up_takes_a_batch_bigger_than_its_buffer() -> None:
    # Being behind means more than the buffer waiting beyond the publish being delivered,
    # when more arrives (hub/brokers/_fanout.py, Reader.push); a batch is bounded by the
    # publish body limit, not by the buffer.
    broker = make()
    reader = await broker.subscribe("news", pos(0), 3)
    await broker.publish("news", items(5))
    assert reader.buffered == 5
    assert await take(reader, 5) == [pos(n) for n in range(1, 6)]
    await broker.publish("news", items(20, start=6))  # a batch bigger than the buffer
    for n in range(26, 29):  # and exactly the buffer behind it: still fine
        await broker.publish("news", items(1, start=n))
    assert reader.buffered == 23
    await broker.publish("news", items(1, start=29))  # one more beyond: cut off
    assert reader.buffered == 0
    with pytest.raises(Overflow):
        await reader.__anext__()


async def test_interrupt_ends_readers_after_their_backlog() -> None:
    broker = make()
    reader = await broker.subscribe("news", pos(0), 10)
    await broker.publish("news", items(2))
    broker.interrupt("news", "boom")
    assert reader.buffered == 2
    assert await take(reader, 2) == [pos(1), pos(2)]
    with pytest.raises(Interrupted) as ended:
        await reader.__anext__()
    assert ended.value.reason == "boom"


async def test_interrupt_without_reason_ends_readers_too() -> None:
    broker = make()
    reader = await broker.subscribe("news", pos(0), 10)
    broker.interrupt("news", None)
    with pytest.raises(Interrupted) as ended:
        await reader.__anext__()
    assert ended.value.reason is None


async def test_close_stops_queueing_for_the_reader() -> None:
    broker = make()
    reader = await broker.subscribe("news", pos(0), 10)
    await broker.publish("news", items(2))
    assert broker.buffered() == (2, 2)
    await reader.close()
    assert broker.buffered() == (0, 0)
    await broker.publish("news", items(3, start=3))
    assert broker.buffered() == (0, 0) and reader.buffered == 0


async def test_a_waiting_reader_is_woken_by_a_publish() -> None:
    broker = make()
    reader = await broker.subscribe("news", pos(0), 10)
    waiting = asyncio.Event()

    async def read() -> Entry:
        waiting.set()  # nothing awaits between this and __anext__ blocking on its waiter
        return await reader.__anext__()

    task = asyncio.create_task(read())
    await waiting.wait()
    assert not task.done()
    [entry] = await broker.publish("news", items(1))
    assert await asyncio.wait_for(task, 5) is entry


async def test_a_waiting_reader_is_woken_by_an_interrupt() -> None:
    broker = make()
    reader = await broker.subscribe("news", pos(0), 10)
    waiting = asyncio.Event()

    async def read() -> Entry:
        waiting.set()
        return await reader.__anext__()

    task = asyncio.create_task(read())
    await waiting.wait()
    broker.interrupt("news", "gone")
    with pytest.raises(Interrupted, match="gone"):
        await asyncio.wait_for(task, 5)


def test_broker_from_url() -> None:
    assert isinstance(broker_from_url("memory://"), MemoryBroker)
    with pytest.raises(ValueError, match=r"unsupported broker URL 'kafka://x'.*memory://"):
        broker_from_url("kafka://x")
