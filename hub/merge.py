"""Open a subscription's streams, tag their events, and merge them into SSE frames.

Each selected stream becomes one source, an async generator of batches of `Tagged` items: the
stream's index in the selection, its new position, the encoded `event:` + `data:` body, and,
for a topic, the whole frame as a one-stream subscriber sees it (shared by all of them). A
position of None marks a control event, which moves no position; an `_End` marks the last
frame of a subscriber the hub drops, after which `frames()` raises `Drop`. aiostream's `merge`
runs the sources concurrently; `frames()` consumes it inside `async with ....stream()`, so
leaving the loop for any reason (end, error, client gone, cancellation) closes every source and
with it every plugin generator and broker subscription.

Batches are what make the hub fast: a source hands over every event it has ready (up to
`BATCH`), the merge costs once per batch, and `frames()` turns a batch into one chunk, which
the response writes at once. A lone stream needs no merging and goes straight through.

A source that raises ends with a `hub.error` control event; the others go on. The merged
stream ends when every source has ended, and `frames()` then ends the response with `hub.end`
(`{"streams": [names]}`): the subscription is over for good (`count`, or generators that
returned or raised), and a client must not reconnect. It is left out where a reconnect is the
point: a broker outage, or a topic whose shared producer stopped (`Interrupted`); and never
comes to a response cut short (`Drop`, shutdown, expiry, a client gone), which never finishes
the merge.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiostream import stream as ops

from .brokers import FRAMES_AT_ONCE, BrokerUnavailable, Interrupted, Overflow
from .cursor import CursorWriter
from .events import CONTROL_PREFIX, control_body, encode_event, event_prefix
from .registry import Stream, Topic
from .subscription import Selected, Subscription

if TYPE_CHECKING:
    from .runtime import Hub

__all__ = ["END", "Activity", "Drop", "family", "frames"]

logger = logging.getLogger("hub")


# How the last chunk of a subscription that ended for good begins (`hub.end`).
END = event_prefix(CONTROL_PREFIX + "end")


class Drop(Exception):
    """Raised by `frames()` after the last frame of a subscriber the hub drops (it fell
    behind): the transport ends the response and closes the connection. `reason` names why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _End:
    """The position of the last frame of a response that is cut short, and why."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"END({self.reason!r})"


Tagged = tuple[int, str | _End | None, bytes, bytes | None]
Batch = list[Tagged]

# Events handed over at once, at most: large enough to amortise the per-batch costs (measured
# on the firehose: 64 costs about 40% more CPU per frame than 256), small enough that a busy
# stream holds the others back for a few milliseconds at most.
BATCH = 256
# Events a generated stream may make ahead of its consumer.
AHEAD = BATCH


@dataclass
class Activity:
    """Live counts, for /health, leak checks and /metrics (`hub.metrics` reads them when
    scraped). Plain numbers, added to once per batch or per connection: counting costs the
    hot path an addition, never a call into a metrics library."""

    subscriptions: int = 0
    open_streams: int = 0
    # open connections by transport ("sse", "ws")
    connections: Counter[str] = field(default_factory=Counter)
    # events by stream family (`room` for `room/lobby`): published through this process, and
    # delivered by it from generated streams (a topic's deliveries: `Broker.delivered`)
    published: Counter[str] = field(default_factory=Counter)
    delivered: Counter[str] = field(default_factory=Counter)
    sse_bytes: int = 0  # sent on SSE responses
    ws_bytes: int = 0  # sent in WebSocket messages
    cut_off: Counter[str] = field(default_factory=Counter)  # subscribers, by reason
    refused: Counter[str] = field(default_factory=Counter)  # requests, by error code
    broker_errors: int = 0  # requests and streams that found the broker unavailable
    # Told each publish's duration (seconds) and topic family, when metrics are on.
    observe_publish: Callable[[str, float], None] | None = None

    def publish_latency(self, name: str, seconds: float) -> None:
        if self.observe_publish is not None:
            self.observe_publish(family(name), seconds)


def family(name: str) -> str:
    """The stream a name belongs to, as metrics label it: `room` for `room/lobby`."""
    return name.partition("/")[0]


async def frames(
    subscription: Subscription,
    hub: Hub,
    preamble: bytes = b"",
    direct: Callable[[bytes], bool] | None = None,
    drop: Callable[[str], None] | None = None,
) -> AsyncGenerator[bytes, None]:
    """The SSE frames of a subscription, a chunk per batch: each event with the cursor after it
    as its id. The first chunk is `preamble` (the retry hint) and an id-only frame with the
    starting cursor, made once every topic's starting position is known, before anything is
    opened. The last chunk is `hub.end` when every stream has ended for good (see above).
    Raises `Drop` after the last frame of a subscriber that fell behind.

    `direct` sends frames on the subscriber's connection at once (`SSEResponse.send_now`):
    a subscription to one topic alone lets the broker deliver through it while nothing is
    queued, so that its own task need not wake for each event. `drop` (`SSEResponse.drop`)
    is told at once when a topic drops the subscriber for falling behind: its task may be
    stuck in a send and never come back for the `hub.overflow` frame.
    """
    activity = hub.activity
    start = dict(subscription.start)
    try:
        for selected in subscription.selected:
            # Without a cursor a topic starts live; naming where "live" begins makes the first
            # id an exact resume point, and replays whatever is published while we set up.
            # Done before the first chunk, which the response head waits for: a client that
            # has the head misses nothing published after it.
            if isinstance(selected.stream, Topic) and start.get(selected.name) is None:
                start[selected.name] = await hub.broker.last_position(selected.name)
    except BrokerUnavailable as exc:
        # Say so for every topic, and end: the client reconnects, and resumes once it is back.
        activity.broker_errors += 1
        yield preamble + b"".join(
            control_body("error", stream=selected.name, error=str(exc))
            for selected in subscription.selected
            if isinstance(selected.stream, Topic)
        )
        return
    writer = CursorWriter(subscription.names, start)
    # The response head waits for this first chunk. Besides the retry hint, it carries the
    # starting cursor as an id-only frame, which sets the client's last event id without
    # firing an event: a client that drops before any event still resumes exactly.
    yield preamble + b"id: " + writer.current().encode() + b"\n\n"
    solo = len(subscription.selected) == 1
    # The streams that ended so that a reconnect resumes them (a broker outage): no hub.end.
    resumable: list[str] = []
    sources = [
        _source(
            index,
            selected,
            start.get(selected.name),
            hub,
            direct if solo else None,
            drop,
            resumable,
        )
        for index, selected in enumerate(subscription.selected)
    ]
    batches: AbstractAsyncContextManager[AsyncIterator[Batch], Any]
    if solo:
        batches = aclosing(sources[0])
    else:
        turns = Turns(len(sources))
        batches = ops.merge(*(_taking_turns(source, turns) for source in sources)).stream()
    activity.subscriptions += 1
    try:
        async with batches as merged:
            async for batch in merged:
                chunk, end = _encode(batch, writer, solo)
                yield chunk
                if end is not None:
                    raise Drop(end.reason)
    finally:
        activity.subscriptions -= 1
    if not resumable:
        yield control_body("end", streams=subscription.names)


def _encode(batch: Batch, writer: CursorWriter, solo: bool) -> tuple[bytes, _End | None]:
    """One chunk of frames for a batch, and the end it comes to, if it ends the response."""
    if solo and len(batch) == 1 and batch[0][3] is not None:
        return batch[0][3], None  # the fan-out case: one topic event, its shared frame
    out = []
    for index, position, body, solo_frame in batch:
        if position is None:
            out.append(body)
        elif isinstance(position, _End):
            out.append(body)
            return b"".join(out), position
        elif solo and solo_frame is not None:
            out.append(solo_frame)
        else:
            # Cursors hold no line break (names and positions are checked), so no escaping.
            out += (b"id: ", writer.advance(index, position).encode(), b"\n", body)
    return b"".join(out), None


class Turns:
    """Hands the right to deliver an event to one ready source at a time, oldest first.

    aiostream's merge takes the first ready source in selection order and only starts the
    next source when none is ready. A source that is ready again at once (a generator that
    never awaits, such as echo with interval=0) would then starve its siblings, the ones not
    yet started among them. So every source waits until all have started, and a source with
    an event may yield it only when it holds the turn; the turn passes, in the order sources
    became ready, when the consumer comes back for the next event. Uncontended, it costs no
    await at all.
    """

    def __init__(self, sources: int) -> None:
        self._unstarted = sources
        self._all_started = asyncio.Event()
        self._held = False
        self._waiting: deque[asyncio.Future[None]] = deque()

    async def started(self) -> None:
        self._unstarted -= 1
        if self._unstarted <= 0:
            self._all_started.set()
            # Let the sources that waited go first, so that events ready at the same moment
            # come out in selection order.
            await asyncio.sleep(0)
        await self._all_started.wait()

    async def acquire(self) -> None:
        if not self._held:
            self._held = True
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled():
                self.release()  # granted as we were cancelled: pass it on
            elif turn in self._waiting:
                self._waiting.remove(turn)
            raise

    def release(self) -> None:
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._held = False


async def _taking_turns(
    source: AsyncGenerator[Batch, None], turns: Turns
) -> AsyncGenerator[Batch, None]:
    await turns.started()
    async with aclosing(source) as items:
        async for item in items:
            await turns.acquire()
            try:
                yield item
            finally:
                turns.release()


async def _source(
    index: int,
    selected: Selected,
    start: str | None,
    hub: Hub,
    direct: Callable[[bytes], bool] | None = None,
    drop: Callable[[str], None] | None = None,
    resumable: list[str] | None = None,
) -> AsyncGenerator[Batch, None]:
    """One selected stream's batches, `count` events at most, its failure made an event.
    Its name goes into `resumable` if it ends for a reason a reconnect may undo: the broker
    is unavailable, or the topic's shared producer stopped."""
    name = selected.name
    remaining = selected.count
    if remaining == 0:
        return
    hub.activity.open_streams += 1
    try:
        definition = selected.stream
        if isinstance(definition, Topic):
            # A topic is read here rather than in a generator of its own: an idle subscriber
            # waits in this frame, and one frame fewer per subscriber counts by the thousand.
            assert start is not None
            subscription = await hub.broker.subscribe(name, start, hub.settings.buffer)
            subscription.dropped = drop
            if definition.producer is not None:
                hub.producers.acquire(definition)
            try:
                if subscription.gap is not None:
                    gap = subscription.gap
                    body = control_body(
                        "gap", stream=name, requested=gap.requested, resumed_from=gap.resumed_from
                    )
                    yield [(index, None, body, None)]
                if direct is not None and remaining is None:
                    # A subscriber of this topic alone: whole frames, shared by all of them,
                    # in slices of a bounded size however large a publish.
                    subscription.direct = direct  # after the gap: nothing may overtake it
                    while True:
                        taken = subscription.take_frames(FRAMES_AT_ONCE)
                        if taken is None:
                            await subscription.ready()
                            continue
                        yield [(index, taken[1], b"", taken[0])]
                        if len(taken[0]) >= FRAMES_AT_ONCE // 2:
                            # A backlog: while the socket takes all, the send never waits,
                            # and a hundred subscribers would each write megabytes before
                            # the loop served anyone else. Take turns.
                            await asyncio.sleep(0)
                while True:
                    # A bare future to wait on, not a coroutine: one frame fewer per idle
                    # subscriber.
                    entries = subscription.take_nowait(BATCH)
                    if not entries:
                        await subscription.ready()
                        continue
                    batch: Batch = [(index, e.position, e.body, e.solo) for e in entries]
                    if remaining is not None:
                        batch, remaining = _at_most(batch, remaining)
                    yield batch
                    if remaining == 0:
                        return
            finally:
                subscription.direct = subscription.dropped = None
                await subscription.close()
                if definition.producer is not None:
                    hub.producers.release(definition)
        else:
            assert isinstance(definition, Stream)
            delivered = hub.activity.delivered
            async with aclosing(_generated(index, definition, selected)) as items:
                async for batch in items:
                    if remaining is not None:
                        batch, remaining = _at_most(batch, remaining)
                    delivered[name] += len(batch)  # a generated stream's name is its family
                    yield batch
                    if remaining == 0:
                        return
    except Overflow as exc:
        # The response logs it, naming the client: it is cut off, and resumes from history.
        reason = f"{exc} on {name!r}"
        yield [(index, _End(reason), control_body("overflow", reason=reason), None)]
    except Interrupted as exc:  # a shared producer ended; it logged its own failure
        # It runs again for the next subscriber, or the broker's feed comes back.
        if resumable is not None:
            resumable.append(name)
        if exc.reason is not None:
            yield [(index, None, control_body("error", stream=name, error=exc.reason), None)]
    except BrokerUnavailable as exc:
        # The broker says so in its own log, once per outage: not a line per subscriber.
        hub.activity.broker_errors += 1
        if resumable is not None:
            resumable.append(name)
        yield [(index, None, control_body("error", stream=name, error=str(exc)), None)]
    except Exception as exc:
        logger.exception("stream %r failed; its subscriber's other streams go on", name)
        error = f"{type(exc).__name__}: {exc}"
        yield [(index, None, control_body("error", stream=name, error=error), None)]
    finally:
        hub.activity.open_streams -= 1


def _at_most(batch: Batch, remaining: int) -> tuple[Batch, int]:
    """The batch cut after `remaining` events, and how many may still follow."""
    for offset, item in enumerate(batch):
        if item[1] is not None:
            remaining -= 1
            if remaining == 0:
                return batch[: offset + 1], 0
    return batch, remaining


async def _generated(
    index: int, definition: Stream, selected: Selected
) -> AsyncGenerator[Batch, None]:
    """Run the plugin's generator in a task of its own that fills a bounded queue, so that
    whatever it made while the consumer was busy goes out as one batch."""
    name, model, prefix = definition.name, definition.event_model, event_prefix(definition.name)
    after = selected.after
    assert after is None or isinstance(after, int)
    limit = selected.count
    loop = asyncio.get_running_loop()
    ready: list[Tagged] = []
    waiting: list[asyncio.Future[None]] = []  # the consumer's wait for events, or for room

    def wake(_: object = None) -> None:
        while waiting:
            future = waiting.pop()
            if not future.done():
                future.set_result(None)

    async def wait() -> None:
        future = loop.create_future()
        waiting.append(future)
        await future

    async def produce() -> None:
        position = -1 if after is None else after
        made = 0
        async with aclosing(definition.open(selected.arguments, after)) as events:
            async for event in events:
                if type(event) is not model and not isinstance(event, model):
                    raise TypeError(
                        f"stream {name!r} yielded {type(event).__name__}, expected {model.__name__}"
                    )
                position += 1
                ready.append((index, str(position), encode_event(prefix, event), None))
                if waiting:
                    wake()
                made += 1
                if made == limit:
                    return
                if len(ready) >= AHEAD:
                    await wait()  # for the consumer to take some

    producer = loop.create_task(produce(), name=f"hub stream {name}")
    producer.add_done_callback(wake)
    try:
        while True:
            if ready:
                batch = ready[:BATCH]
                del ready[:BATCH]
                wake()  # room again, if the producer waits for it
                yield batch
            elif producer.done():
                producer.result()  # raises what the generator raised
                return
            else:
                await wait()
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
