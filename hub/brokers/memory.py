"""The embedded broker: topics in this process's memory, lost when it stops.

Positions are `<epoch>.<seq>`: `seq` counts a topic's events from 1 (`.0` is before the first)
and `epoch` is drawn afresh at every start, so a cursor from an earlier process is told apart
and answered with a gap rather than taken for a position in today's history.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections import deque
from collections.abc import Sequence
from itertools import islice

from ._fanout import Reader, Run, fan_out
from .base import SLICE, Broker, BrokerSubscription, Entry, Gap, Interrupted, TopicConfig

__all__ = ["MemoryBroker"]

_POSITION = re.compile(r"([a-z0-9]{1,16})\.(\d{1,18})")


class _Topic:
    __slots__ = ("name", "config", "entries", "stamps", "seq", "readers", "publishing")

    def __init__(self, name: str, config: TopicConfig) -> None:
        self.name = name
        self.config = config
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


class MemoryBroker(Broker):
    def __init__(self, url: str = "memory://", *, epoch: str | None = None) -> None:
        self.url = url
        self.epoch = epoch or _new_epoch()
        self._topics: dict[str, _Topic] = {}

    def declare(self, topic: str, config: TopicConfig) -> None:
        existing = self._topics.get(topic)
        if existing is None:
            self._topics[topic] = _Topic(topic, config)
        else:
            existing.config = config

    def _topic(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = _Topic(name, TopicConfig())
        return topic

    def _position(self, seq: int) -> str:
        return f"{self.epoch}.{seq}"

    async def last_position(self, topic: str) -> str:
        return self._position(self._topic(topic).seq)

    async def bounds(self, topic: str) -> tuple[str, str] | None:
        state = self._topic(topic)
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
                    Entry.encode(topic, self._position(seq), item)
                    for seq, item in enumerate(data[start : start + SLICE], start=first + start)
                ]
            # The history grows and fan-out takes its readers in one step: a subscriber
            # arriving meanwhile either replays these or is pushed them, never both.
            state.seq += len(entries)
            state.append(entries)
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
            or match.group(1) != self.epoch
            or int(match.group(2)) < state.first_seq - 1
        ):
            # Another broker's position, a lost history (another epoch), or one trimmed past
            # the position: say so, then replay all that is retained.
            gap = Gap(after, self._position(state.first_seq))
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
        for reader in list(self._topic(topic).readers):
            reader.fail(Interrupted(reason), keep_backlog=True)

    def buffered(self) -> tuple[int, int]:
        """Live entries queued over all subscribers, and the most for any one."""
        sizes = [reader.buffered for topic in self._topics.values() for reader in topic.readers]
        return sum(sizes), max(sizes, default=0)


def _new_epoch() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(6))
