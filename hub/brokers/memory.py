"""The embedded broker: topics in this process's memory, lost when it stops.

Positions are `<epoch>.<seq>`: `seq` counts a topic's events from 1 (`.0` is before the first)
and `epoch` is drawn afresh at every start, so a cursor from an earlier process is told apart
and answered with a gap rather than taken for a position in today's history.

Keyed topics (`room/lobby`) come and go: one exists from its first publish or subscriber, and
is kept while it has subscribers or retained history. Past `max_topics` of them, the idle one
used least recently is dropped; one left by its last reader with nothing retained is dropped
at once. Each keyed topic made
gets an epoch of its own (the broker's, and a count), so a cursor from a dropped one is a gap
in the next, never a position in it.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from itertools import islice

from ._fanout import Reader, Run, fan_out
from .base import (
    MAX_TOPICS,
    SLICE,
    Broker,
    BrokerSubscription,
    Entry,
    Gap,
    Interrupted,
    TopicConfig,
    is_keyed,
)

__all__ = ["MemoryBroker"]

_POSITION = re.compile(r"([a-z0-9]{1,16})\.(\d{1,18})")


# Topics looked at from the least recently used end, at most, each time a keyed one is made.
_SWEEP = 64


class _Topic:
    __slots__ = (
        "name",
        "config",
        "epoch",
        "owner",
        "entries",
        "stamps",
        "seq",
        "readers",
        "publishing",
    )

    def __init__(
        self, name: str, config: TopicConfig, epoch: str, owner: MemoryBroker | None = None
    ) -> None:
        self.name = name
        self.config = config
        self.epoch = epoch
        self.owner = owner  # of a keyed topic, told when its last reader leaves
        self.entries: deque[Entry] = deque()
        self.stamps: deque[float] = deque()  # monotonic publish times, for age bounds
        self.seq = 0  # of the newest event
        self.readers: set[Reader] = set()
        # One publish at a time, in order: a large one yields to the loop as it goes.
        self.publishing = asyncio.Lock()

    def append(self, entries: list[Entry]) -> None:
        # Only what the history keeps is added: a batch far larger than the history costs
        # a copy of its tail, not a push and a pop per event.
        kept = entries[-self.config.history :]
        drop = len(self.entries) + len(kept) - self.config.history
        if drop >= len(self.entries):
            self.entries.clear()
            self.stamps.clear()
        else:
            for _ in range(max(drop, 0)):
                self.entries.popleft()
                self.stamps.popleft()
        self.entries.extend(kept)
        self.stamps.extend([time.monotonic()] * len(kept))
        self.trim()

    def trim(self) -> None:
        while len(self.entries) > self.config.history:
            self.entries.popleft()
            self.stamps.popleft()
        if self.config.max_age is not None:
            oldest_kept = time.monotonic() - self.config.max_age
            while self.stamps and self.stamps[0] < oldest_kept:
                self.entries.popleft()
                self.stamps.popleft()

    @property
    def first_seq(self) -> int:
        """The seq of the oldest retained event (seq + 1 when none is retained)."""
        return self.seq - len(self.entries) + 1

    def position(self, seq: int) -> str:
        return f"{self.epoch}.{seq}"

    def idle(self) -> bool:
        """Nobody reads nor publishes it now."""
        return not self.readers and not self.publishing.locked()

    def vacated(self) -> None:
        if self.owner is not None:
            self.owner.vacated(self)


class MemoryBroker(Broker):
    def __init__(
        self, url: str = "memory://", *, epoch: str | None = None, max_topics: int = MAX_TOPICS
    ) -> None:
        super().__init__(max_topics=max_topics)
        self.url = url
        self.epoch = epoch or _new_epoch()
        self._topics: dict[str, _Topic] = {}
        # Keyed topics, the least recently used first.
        self._keyed: OrderedDict[str, _Topic] = OrderedDict()
        self._made = 0  # keyed topics made so far: each one's epoch

    def declare(self, topic: str, config: TopicConfig, *, keyed: bool = False) -> None:
        super().declare(topic, config, keyed=keyed)
        if keyed:
            return  # its topics are made as they are used
        existing = self._topics.get(topic)
        if existing is None:
            self._topics[topic] = _Topic(topic, config, self.epoch)
        else:
            existing.config = config

    def _find(self, name: str) -> _Topic | None:
        return self._keyed.get(name) if is_keyed(name) else self._topics.get(name)

    def _topic(self, name: str) -> _Topic:
        """The topic `name`, made if need be; a keyed one counts as just used."""
        if not is_keyed(name):
            topic = self._topics.get(name)
            if topic is None:
                topic = self._topics[name] = _Topic(name, self.config(name), self.epoch)
            return topic
        keyed = self._keyed
        topic = keyed.get(name)
        if topic is not None:
            keyed.move_to_end(name)
            return topic
        self._make_room()
        self._made += 1
        epoch = self.epoch + _base36(self._made)
        topic = keyed[name] = _Topic(name, self.config(name), epoch, self)
        return topic

    def _make_room(self) -> None:
        """At `max_topics`, drop the idle keyed topic used least recently.

        Only then: an idle, empty topic may be one a subscriber has just made, fixing where
        it starts before it reads; dropped, its subscriber would get a gap for nothing. One
        that nobody reads and that holds nothing goes as its last reader leaves (`vacated`)."""
        keyed = self._keyed
        looked = 0
        while len(keyed) >= self.max_topics and looked < _SWEEP:
            looked += 1
            name, topic = next(iter(keyed.items()))
            if topic.idle():
                del keyed[name]
            else:
                keyed.move_to_end(name)  # in use: as good as used just now

    def vacated(self, topic: _Topic) -> None:
        """A keyed topic's last reader left: drop it now if it holds nothing."""
        if self._keyed.get(topic.name) is topic and topic.idle():
            topic.trim()
            if not topic.entries:
                del self._keyed[topic.name]

    def topics(self) -> int:
        return len(self._topics) + len(self._keyed)

    async def last_position(self, topic: str) -> str:
        state = self._topic(topic)
        return state.position(state.seq)

    async def position(self, topic: str) -> str | None:
        state = self._find(topic)
        return state.position(state.seq) if state is not None and state.seq else None

    async def bounds(self, topic: str) -> tuple[str, str] | None:
        state = self._find(topic)
        if state is None:
            return None
        state.trim()
        if not state.entries:
            return None
        return state.entries[0].position, state.entries[-1].position

    async def publish(self, topic: str, data: Sequence[str]) -> list[Entry]:
        state = self._topic(topic)
        async with state.publishing:
            first = state.seq + 1
            entries: list[Entry] = []
            for start in range(0, len(data), SLICE):
                if start:
                    await asyncio.sleep(0)  # a large batch lets the loop serve others
                entries += [
                    Entry.encode(topic, state.position(seq), item)
                    for seq, item in enumerate(data[start : start + SLICE], start=first + start)
                ]
            # The history grows and fan-out takes its readers in one step: a subscriber
            # arriving meanwhile either replays these or is pushed them, never both.
            state.seq += len(entries)
            state.append(entries)
            self.delivered[topic.partition("/")[0]] += len(entries) * len(state.readers)
            await fan_out(state.readers, Run(entries))
        return entries

    async def subscribe(self, topic: str, after: str, buffer: int) -> BrokerSubscription:
        state = self._topic(topic)
        state.trim()
        self.check_position(after)
        match = _POSITION.fullmatch(after)
        gap = None
        if (
            match is None
            or match.group(1) != state.epoch
            or int(match.group(2)) < state.first_seq - 1
        ):
            # Another broker's position, a lost history (another epoch, or a keyed topic
            # dropped since), or one trimmed past the position: say so, then replay all that
            # is retained.
            gap = Gap(after, state.position(state.first_seq))
            replay = list(state.entries)
        else:
            # A position beyond the newest (not one this hub gave) resumes at the newest.
            skip = max(0, min(int(match.group(2)), state.seq) - state.first_seq + 1)
            replay = list(islice(state.entries, skip, None))
        # No await between reading the history and registering: nothing published in
        # between can be missed or seen twice.
        reader = Reader(state, replay, buffer, gap)
        state.readers.add(reader)
        return reader

    def interrupt(self, topic: str, reason: str | None) -> None:
        state = self._find(topic)
        for reader in list(state.readers if state is not None else ()):
            reader.fail(Interrupted(reason), keep_backlog=True)

    def buffered(self) -> tuple[int, int]:
        """Live entries queued over all subscribers, and the most for any one."""
        sizes = [
            reader.buffered
            for topics in (self._topics, self._keyed)
            for topic in topics.values()
            for reader in topic.readers
        ]
        return sum(sizes), max(sizes, default=0)


def _base36(number: int) -> str:
    digits = ""
    while True:
        number, digit = divmod(number, 36)
        digits = _ALPHABET[digit] + digits
        if not number:
            return digits


_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def _new_epoch() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(6))
