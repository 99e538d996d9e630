"""The broker interface: where topics live, with their history.

A broker stores each published event once, gives it a position, keeps a bounded history per
topic, and serves subscribers from a position: the retained events after it (replay), then
new ones as they come (live), with no gap or duplicate at the seam. It encodes an event's
shared SSE body once, whatever the number of subscribers.

Positions are opaque strings to everyone but the broker. They never contain `,`. A broker
that can lose its history (a restart of the memory broker) puts an epoch in its positions, so
that a position from a lost history is recognised and reported as a gap.
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ..cursor import quote_name
from ..events import encode_body

__all__ = [
    "FRAMES_AT_ONCE",
    "IDLE_TTL",
    "MAX_TOPICS",
    "SLICE",
    "Broker",
    "BrokerSubscription",
    "BrokerUnavailable",
    "Entry",
    "Gap",
    "Lease",
    "Overflow",
    "TopicConfig",
]

# The most bytes of frames handed to a connection at once: as much as uvicorn lets a
# transport buffer before a write waits (64 KiB), so that a subscriber's connection holds a
# bounded amount whatever the size of a publish.
FRAMES_AT_ONCE = 64 * 1024
# Events validated or encoded between two turns of the loop: a batch of 50,000 must not keep
# everyone else waiting (about 2 ms a slice).
SLICE = 500

# What any broker's position looks like. A position of this form that is not one of this
# broker's own (another broker's, after a deployment moved from memory to Redis, or made up)
# is no error: the subscriber gets a gap, as for a lost history, never a refusal, since a
# browser's EventSource gives up for good on any answer but 200.
POSITION_SYNTAX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,63}")


class BrokerUnavailable(ConnectionError):
    """The broker cannot be reached now (Redis down); the message names it."""


class Overflow(Exception):
    """A subscriber fell further behind than its buffer allows; it must resume from history."""


class Interrupted(Exception):
    """A topic's live feed ended: its shared producer failed (`reason` says how) or finished
    (`reason` is None)."""

    def __init__(self, reason: str | None) -> None:
        super().__init__(reason or "ended")
        self.reason = reason


class Entry(NamedTuple):
    """One event of a topic, encoded once and shared by every subscriber.

    A named tuple rather than a class: it holds only strings and bytes, so the garbage
    collector stops tracking it after its first pass, and a history or a batch of 50,000
    costs the collector's full passes nothing (as a class it made each of them pause for
    tens of milliseconds).
    """

    position: str
    body: bytes  # `event:` + `data:` lines
    solo: bytes  # the whole frame for a subscriber of this topic alone

    @classmethod
    def encode(cls, topic: str, position: str, data: str) -> Entry:
        body = encode_body(topic, data)
        return cls(
            position,
            body,
            b"id: " + quote_name(topic).encode() + b":" + position.encode() + b"\n" + body,
        )


@dataclass(frozen=True, slots=True)
class Gap:
    """The history no longer reaches back to the requested position."""

    requested: str
    resumed_from: str  # the first position available: replay starts there


@dataclass(frozen=True, slots=True)
class TopicConfig:
    history: int = 1000  # events kept for resume
    max_age: float | None = None  # seconds an event is kept, if also bounded by age


class BrokerSubscription(ABC):
    """One subscriber's view of one topic: `gap`, then the entries after its position."""

    # Thousands are alive at once: subclasses declare their fields in __slots__ too.
    __slots__ = ("direct", "dropped")
    gap: Gap | None
    # Set by a subscriber of this topic alone: called with the frames of new entries when
    # nothing is queued; True if it sent them itself, so they need not be queued at all.
    direct: Callable[[bytes], bool] | None
    # Set by a subscriber with a connection: called with the reason when it falls behind and
    # is dropped from the fan-out, at once, even if it is stuck sending and takes nothing.
    dropped: Callable[[str], None] | None

    def __aiter__(self) -> AsyncIterator[Entry]:
        return self

    async def __anext__(self) -> Entry:
        return (await self.take(1))[0]

    async def take(self, most: int) -> list[Entry]:
        """The next entries, up to `most`: at least one, all that are ready, in order.

        Raises `Overflow` or `Interrupted` once the entries queued before that are taken.
        """
        while not (batch := self.take_nowait(most)):
            await self.ready()
        return batch

    @abstractmethod
    def take_nowait(self, most: int) -> list[Entry]:
        """The entries ready now, up to `most`, maybe none; raises as `take` does."""

    def take_frames(self, most: int) -> tuple[bytes, str] | None:
        """The next entries' one-topic frames (about `most` bytes, at least one entry) and
        the position of the last; None when none is ready. Raises as `take_nowait` does."""
        entries = self.take_nowait(max(1, most // 256))
        if not entries:
            return None
        return b"".join(entry.solo for entry in entries), entries[-1].position

    @abstractmethod
    def ready(self) -> Awaitable[None]:
        """Resolves when `take_nowait` has something to give (or to raise)."""

    @abstractmethod
    async def close(self) -> None: ...

    @property
    def buffered(self) -> int:
        """Live entries waiting for this subscriber."""
        return 0


class Lease:
    """The right to run a shared stream's producer in this process, until released.

    This one is for a broker of one process, where nobody else could take it: it is never
    lost. A broker shared between processes returns one that renews itself.
    """

    async def kept(self) -> None:
        """Keep the lease; return when it is lost (another process may hold it now)."""
        await asyncio.get_running_loop().create_future()  # never: cancelled at release

    async def release(self) -> None:  # noqa: B027 - nothing to give back here
        """Let go, so that another process can take over at once."""


# Keyed topics (`family/key`) a memory broker holds at most, by default (`--max-topics`); and
# how long a Redis broker keeps an idle keyed topic without `max_age` (`--idle-ttl`), in s.
MAX_TOPICS = 100_000
IDLE_TTL = 24 * 3600.0


def is_keyed(topic: str) -> bool:
    """Whether `topic` is one topic of a keyed family (`room/lobby`)."""
    return "/" in topic


class Broker(ABC):
    url: str
    lease_retry: float = 1.0  # seconds between tries for a lease another process holds

    def __init__(self, *, max_topics: int = MAX_TOPICS, idle_ttl: float = IDLE_TTL) -> None:
        self.max_topics = max_topics
        self.idle_ttl = idle_ttl
        self._configs: dict[str, TopicConfig] = {}
        # Events handed to this process's subscribers of each topic family (for /metrics):
        # counted once per publish, the events times the readers.
        self.delivered: Counter[str] = Counter()

    def declare(self, topic: str, config: TopicConfig, *, keyed: bool = False) -> None:
        """Make a topic known, with its history bounds, before it is used; those of a keyed
        family (`keyed`) hold for each of its topics, `family/<key>`."""
        self._configs[topic] = config

    def config(self, topic: str) -> TopicConfig:
        """The bounds of `topic`, or of its family; the defaults for a topic never declared."""
        config = self._configs.get(topic)
        if config is None and is_keyed(topic):
            config = self._configs.get(topic.partition("/")[0])
        return config if config is not None else TopicConfig()

    def topics(self) -> int:
        """The topics this process holds (memory) or reads (a shared broker) now."""
        return 0

    async def position(self, topic: str) -> str | None:
        """The position of `topic`'s newest event, or None if it has none; unlike
        `last_position`, it makes no topic."""
        bounds = await self.bounds(topic)
        return bounds[1] if bounds is not None else None

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect, where there is anything to connect to."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release every resource; subscribers end."""

    def check_position(self, position: str) -> None:
        """Raise ValueError, saying what is expected, if `position` cannot be any broker's.

        A well-formed position that is not this broker's own is accepted here: `subscribe`
        answers it with a gap."""
        if not POSITION_SYNTAX.fullmatch(position):
            raise ValueError(
                "expected a topic position as the hub's ids give it: 1 to 64 of "
                "A-Z a-z 0-9 . _ ~ -, e.g. 'k3f9q2.17' or '1700000000000-0'"
            )

    @abstractmethod
    async def last_position(self, topic: str) -> str:
        """The position of the newest event: subscribing after it means new events only."""

    @abstractmethod
    async def bounds(self, topic: str) -> tuple[str, str] | None:
        """The positions of the oldest and newest retained events, or None if none is."""

    @abstractmethod
    async def publish(self, topic: str, data: Sequence[str]) -> list[Entry]:
        """Append events (their JSON) in order; return their entries."""

    @abstractmethod
    async def subscribe(self, topic: str, after: str, buffer: int) -> BrokerSubscription:
        """Replay what follows `after`, then live events; at most `buffer` live ones queued.

        A position that is not this broker's own (see `check_position`) is a gap: the
        subscriber gets every retained event."""

    def interrupt(self, topic: str, reason: str | None) -> None:  # noqa: B027 - optional hook
        """End this process's live subscribers of `topic`: a producer failed with `reason`,
        or finished (None)."""

    async def lease(self, name: str) -> Lease | None:
        """The lease to run shared stream `name`'s producer here, or None while another
        process holds it. Raises `BrokerUnavailable`."""
        return Lease()

    def buffered(self) -> tuple[int, int]:
        """Live entries queued for subscribers in this process: in all, and the most for one."""
        return 0, 0
