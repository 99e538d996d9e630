"""hub.runtime: the Hub, publishing into topics, and shared producers, in-process."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hub import Event, Hub, LastPosition, PluginError, Registry, publish, stream, topic
from hub.brokers import Entry
from hub.brokers.memory import MemoryBroker
from hub.registry import Definition
from hub.subscription import RequestError, parse_subscription
from hub.testing import acollect
from streams.chat import ChatMessage, chat

pytestmark = pytest.mark.anyio

EPOCH = "rt0001"


class Tick(Event):
    n: int


class Other(Event):
    text: str


@stream("rt_numbers")
async def rt_numbers(after: LastPosition = None) -> AsyncIterator[Tick]:
    """0 to 4, resumable."""
    for n in range(0 if after is None else after + 1, 5):
        yield Tick(n=n)


# --- shared producers: they log their starts and stops, and wait for the test's triggers ---

LOG: list[str] = []


class Controls:
    def __init__(self) -> None:
        self.triggers: asyncio.Queue[None] = asyncio.Queue()
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()


_CONTROLS: dict[str, Controls] = {}


def controls(name: str) -> Controls:
    return _CONTROLS.setdefault(name, Controls())


@pytest.fixture(autouse=True)
def fresh_controls() -> Iterator[None]:
    LOG.clear()
    _CONTROLS.clear()  # asyncio primitives bind to one loop: every test gets new ones
    yield


def _started(name: str) -> Controls:
    LOG.append(f"{name} start")
    control = controls(name)
    control.started.set()
    return control


def _stopped(name: str) -> None:
    LOG.append(f"{name} stop")
    controls(name).stopped.set()


@stream("rt_shared", shared=True)
async def rt_shared() -> AsyncIterator[Tick]:
    control, n = _started("rt_shared"), 0
    try:
        while True:
            await control.triggers.get()
            yield Tick(n=n)
            n += 1
    finally:
        _stopped("rt_shared")


@stream("rt_eager", shared=True, eager=True)
async def rt_eager() -> AsyncIterator[Tick]:
    control, n = _started("rt_eager"), 0
    try:
        while True:
            await control.triggers.get()
            yield Tick(n=n)
            n += 1
    finally:
        _stopped("rt_eager")


# These yield at once: a producer starts only after its first subscriber has subscribed.
@stream("rt_failing", shared=True)
async def rt_failing() -> AsyncIterator[Tick]:
    _started("rt_failing")
    try:
        yield Tick(n=0)
        raise ValueError("sensor unplugged")
    finally:
        _stopped("rt_failing")


@stream("rt_wrong", shared=True)
async def rt_wrong() -> AsyncIterator[Tick]:
    yield Other(text="not a tick")  # type: ignore[misc]


@stream("rt_ending", shared=True)
async def rt_ending() -> AsyncIterator[Tick]:
    yield Tick(n=0)
    yield Tick(n=1)


# --- helpers ---------------------------------------------------------------------------------


def make_hub(*definitions: Definition) -> Hub:
    registry = Registry()
    for definition in definitions:
        registry.add(definition)
    return Hub(registry, broker=MemoryBroker(epoch=EPOCH))


def data(entry: Entry) -> str:
    event, line = entry.body.decode().splitlines()[:2]
    return line.removeprefix("data: ")


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll one of the hub's counters, which have no event to wait on; bounded in time."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


def message(user: str, text: str) -> dict[str, str]:
    return {"user": user, "text": text}


# --- the hub and publishing ------------------------------------------------------------------


async def test_a_running_hub_is_current() -> None:
    registry = Registry()
    registry.add(chat)
    async with Hub(registry) as running:
        assert Hub.current is running
        assert isinstance(running.broker, MemoryBroker)
    assert Hub.current is None


async def test_hub_publish_fills_in_received_at() -> None:
    async with make_hub(chat) as hub:
        before = datetime.now(UTC)
        [entry] = await hub.publish("chat", [message("a", "b")])
        after = datetime.now(UTC)
    assert entry.position == f"{EPOCH}.1"
    assert entry.body.startswith(b"event: chat\n")
    sent = json.loads(data(entry))
    assert (sent["user"], sent["text"]) == ("a", "b")
    received = datetime.fromisoformat(sent["received_at"])
    assert received.utcoffset() == timedelta(0)
    assert before <= received <= after


async def test_module_publish_returns_positions() -> None:
    async with make_hub(chat) as hub:
        positions = await publish("chat", message("a", "1"), ChatMessage(user="b", text="2"))
        assert positions == [f"{EPOCH}.1", f"{EPOCH}.2"]
        assert await publish(chat.name, ChatMessage(user="c", text="3")) == [f"{EPOCH}.3"]
        replay = await hub.broker.subscribe("chat", f"{EPOCH}.0", 10)
        texts = [json.loads(data(await replay.__anext__()))["text"] for _ in range(3)]
        assert texts == ["1", "2", "3"]
        with pytest.raises(ValueError, match=r"\[0\] text: Field required"):
            await publish("chat", {"user": "a"})
        with pytest.raises(ValueError, match="unknown stream 'rt_nope'"):
            await publish("rt_nope", message("a", "b"))
        assert await hub.broker.last_position("chat") == f"{EPOCH}.3"


async def test_module_publish_without_a_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Hub, "current", None)
    with pytest.raises(RuntimeError, match="no hub is running in this process"):
        await publish("chat", message("a", "b"))


@pytest.mark.parametrize(
    ("name", "events", "status", "mentions"),
    [
        ("rt_nope", [message("a", "b")], 404, "unknown stream 'rt_nope'"),
        ("rt_numbers", [{"n": 1}], 405, "'rt_numbers' is a generated stream"),
        ("rt_shared", [{"n": 1}], 405, "'rt_shared' is fed by its producer"),
        ("chat", [{"user": "a"}], 422, "[0] text: Field required"),
        (
            "chat",
            [{**message("a", "b"), "received_at": "2020-01-01T00:00:00Z"}],
            422,
            "[0] received_at: set by the hub",
        ),
        ("chat", ["hi"], 422, "[0] (event): expected a JSON object (ChatMessage)"),
        ("chat", [], 422, "no events given"),
    ],
)
async def test_publish_refuses(name: str, events: list[Any], status: int, mentions: str) -> None:
    async with make_hub(chat, rt_numbers, rt_shared) as hub:
        with pytest.raises(RequestError) as refused:
            await hub.publish(name, events)
        assert refused.value.status == status
        assert mentions in refused.value.message
        assert await hub.broker.last_position("chat") == f"{EPOCH}.0"
        assert not hub.producers.running("rt_shared")


async def test_a_batch_with_bad_items_publishes_nothing() -> None:
    batch: list[Any] = [
        message("a", "ok"),
        {"user": "b"},
        {**message("c", "x"), "received_at": "2020-01-01T00:00:00Z"},
        42,
    ]
    async with make_hub(chat) as hub:
        await hub.publish("chat", [message("a", "first")])
        with pytest.raises(RequestError) as refused:
            await hub.publish("chat", batch)
        assert await hub.broker.last_position("chat") == f"{EPOCH}.1"
    errors = refused.value.details["errors"]
    assert [(e["index"], e["field"]) for e in errors] == [(1, "text"), (2, "received_at"), (3, "")]


# --- subscribing in-process ------------------------------------------------------------------


async def test_acollect_on_a_topic_starts_live() -> None:
    async with make_hub(chat) as hub:
        await hub.publish("chat", [message("early", "unseen")])
        collecting = asyncio.create_task(acollect("chat", 3, hub=hub, timeout=5))
        # The collector fixes where "live" starts as it opens its stream; the hub's count of
        # open stream sources is the only sign of that, so poll it (bounded).
        await wait_until(lambda: hub.activity.open_streams == 1)
        entries = await hub.publish("chat", [message("u", str(n)) for n in range(3)])
        received = await asyncio.wait_for(collecting, 5)
    assert [e.id for e in received] == [f"chat:{e.position}" for e in entries]
    assert [(e.event, e.data) for e in received] == [("chat", data(e)) for e in entries]


async def test_a_cursor_resumes_a_topic_and_a_generated_stream_together() -> None:
    async with make_hub(chat, rt_numbers) as hub:
        entries = await hub.publish("chat", [message("u", text) for text in "abc"])
        cursor = f"chat:{entries[0].position},rt_numbers:2"
        received = await acollect(
            ["chat", "rt_numbers"], 4, hub=hub, last_event_id=cursor, timeout=5
        )
    assert [e.json()["text"] for e in received if e.event == "chat"] == ["b", "c"]
    assert [e.json() for e in received if e.event == "rt_numbers"] == [{"n": 3}, {"n": 4}]
    assert received[-1].id == f"chat:{entries[2].position},rt_numbers:4"


async def test_count_ends_a_topic() -> None:
    async with make_hub(chat) as hub:
        collecting = asyncio.create_task(
            acollect("chat", 5, params={"count": 2}, hub=hub, timeout=5)
        )
        await wait_until(lambda: hub.activity.open_streams == 1)  # subscribed: see above
        entries = await hub.publish("chat", [message("u", str(n)) for n in range(3)])
        received = await asyncio.wait_for(collecting, 5)
    assert [e.id for e in received] == [f"chat:{e.position}" for e in entries[:2]]


# --- shared producers ------------------------------------------------------------------------


async def test_a_shared_producer_runs_once_while_it_has_subscribers() -> None:
    control = controls("rt_shared")
    async with make_hub(rt_shared) as hub:
        assert not hub.producers.running("rt_shared")
        both = [asyncio.create_task(acollect("rt_shared", 3, hub=hub, timeout=5)) for _ in "ab"]
        # Both subscribed before the producer yields anything (it waits for triggers).
        await wait_until(lambda: hub.activity.open_streams == 2)
        assert hub.producers.running("rt_shared")
        for _ in range(3):
            control.triggers.put_nowait(None)
        first, second = await asyncio.wait_for(asyncio.gather(*both), 5)
        assert [(e.id, e.data) for e in first] == [(e.id, e.data) for e in second]
        assert [e.id for e in first] == [f"rt_shared:{EPOCH}.{n}" for n in (1, 2, 3)]
        assert [e.json() for e in first] == [{"n": 0}, {"n": 1}, {"n": 2}]
        await asyncio.wait_for(control.stopped.wait(), 5)  # both left: its finally ran
        assert LOG == ["rt_shared start", "rt_shared stop"]
        assert not hub.producers.running("rt_shared")
        control.stopped.clear()
        control.triggers.put_nowait(None)  # taken by the restarted producer
        [again] = await acollect("rt_shared", 1, hub=hub, timeout=5)
        assert (again.id, again.json()) == (f"rt_shared:{EPOCH}.4", {"n": 0})
        await asyncio.wait_for(control.stopped.wait(), 5)
    assert LOG == ["rt_shared start", "rt_shared stop"] * 2


async def test_an_eager_shared_producer_runs_without_subscribers() -> None:
    control = controls("rt_eager")
    async with make_hub(rt_eager) as hub:
        await asyncio.wait_for(control.started.wait(), 5)
        assert hub.producers.running("rt_eager")
        for expected in (0, 1):
            collecting = asyncio.create_task(acollect("rt_eager", 1, hub=hub, timeout=5))
            await wait_until(lambda: hub.activity.open_streams == 1)  # subscribed
            control.triggers.put_nowait(None)
            [received] = await asyncio.wait_for(collecting, 5)
            assert received.json() == {"n": expected}  # the same run goes on
            assert hub.activity.open_streams == 0  # acollect closed its subscription
            assert hub.producers.running("rt_eager")
            assert LOG == ["rt_eager start"]
    assert LOG == ["rt_eager start", "rt_eager stop"]


async def test_a_failing_shared_producer_tells_its_subscribers_and_stops() -> None:
    async with make_hub(rt_failing) as hub:
        received = await acollect("rt_failing", 5, hub=hub, timeout=5, control=True)
        await asyncio.wait_for(controls("rt_failing").stopped.wait(), 5)
        assert not hub.producers.running("rt_failing")
    assert [e.event for e in received] == ["rt_failing", "hub.error"]
    assert received[1].json() == {"stream": "rt_failing", "error": "ValueError: sensor unplugged"}


async def test_a_shared_producer_yielding_the_wrong_type_is_an_error() -> None:
    async with make_hub(rt_wrong) as hub:
        received = await acollect("rt_wrong", 5, hub=hub, timeout=5, control=True)
        assert not hub.producers.running("rt_wrong")
    assert [(e.event, e.json()) for e in received] == [
        (
            "hub.error",
            {
                "stream": "rt_wrong",
                "error": "TypeError: stream 'rt_wrong' yielded Other, expected Tick",
            },
        )
    ]


async def test_a_shared_producer_that_ends_ends_its_subscribers_streams() -> None:
    async with make_hub(rt_ending) as hub:
        received = await acollect("rt_ending", 5, hub=hub, timeout=5)
    assert [(e.event, e.json()) for e in received] == [("rt_ending", {"n": n}) for n in (0, 1)]


# --- definitions refused -----------------------------------------------------------------------


def test_a_shared_stream_cannot_take_parameters() -> None:
    refused = r"shared stream 'rt_bad' runs once .* cannot take parameters"
    with pytest.raises(PluginError, match=refused):

        @stream("rt_bad", shared=True)
        async def sized(size: int = 1) -> AsyncIterator[Tick]:
            yield Tick(n=size)

    with pytest.raises(PluginError, match=refused):

        @stream("rt_bad", shared=True)
        async def resumable(after: LastPosition = None) -> AsyncIterator[Tick]:
            yield Tick(n=after or 0)


@pytest.mark.parametrize(
    ("options", "mentions"),
    [
        ({"history": -1}, "history must be an int >= 0 (events kept), got -1"),
        ({"history": 2.5}, "history must be an int >= 0"),
        ({"history": True}, "history must be an int >= 0"),
        ({"max_age": 0}, "max_age must be a number of seconds > 0, got 0"),
        ({"max_age": -5.0}, "max_age must be a number of seconds > 0"),
        ({"max_age": "60"}, "max_age must be a number of seconds > 0"),
    ],
)
def test_topic_refuses_bad_history_bounds(options: dict[str, Any], mentions: str) -> None:
    with pytest.raises(PluginError, match=re.escape(f"{__name__}: topic 'rt_t': {mentions}")):
        topic("rt_t", Tick, **options)


def test_topic_refuses_a_bad_name_naming_the_module() -> None:
    with pytest.raises(PluginError, match=re.escape(f"{__name__}: topic 'Bad Name'")):
        topic("Bad Name", Tick)


class GatedBroker(MemoryBroker):
    """A broker slow to say where a topic stands, as Redis is under a burst of subscribers."""

    def __init__(self) -> None:
        super().__init__(epoch=EPOCH)
        self.gate = asyncio.Event()

    async def last_position(self, topic: str) -> str:
        await self.gate.wait()
        return await super().last_position(topic)


async def test_the_first_chunk_waits_for_live_positions_and_nothing_after_it_is_missed() -> None:
    registry = Registry()
    registry.add(chat)
    async with Hub(registry, broker=GatedBroker()) as hub:
        broker = hub.broker
        assert isinstance(broker, GatedBroker)
        subscription = parse_subscription(
            registry, ["chat"], [], check_position=broker.check_position
        )
        frames = hub.frames(subscription, preamble=b"retry: 1\n\n")
        first = asyncio.create_task(anext(frames))
        [early] = await hub.publish("chat", [message("early", "before the position is known")])
        for _ in range(20):
            await asyncio.sleep(0)
        assert not first.done()  # the head would still be waiting
        broker.gate.set()
        # The retry hint, and the starting cursor as an id-only frame: after the early event.
        expected = b"retry: 1\n\nid: chat:" + early.position.encode() + b"\n\n"
        assert await asyncio.wait_for(first, 5) == expected
        [entry] = await hub.publish("chat", [message("late", "right after the head")])
        chunk = await asyncio.wait_for(anext(frames), 5)
        assert chunk == entry.solo
        await frames.aclose()
