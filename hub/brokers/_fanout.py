"""A subscriber's queue in this process, shared by the brokers: the local end of fan-out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

from .base import BrokerSubscription, Entry, Gap, Overflow

__all__ = ["Fed", "Reader"]


class Fed(Protocol):
    """What feeds readers: it keeps them in `readers` and pushes new entries to each."""

    readers: set[Reader]


class Reader(BrokerSubscription):
    """One subscriber's queue in this process: a replay, then the live entries pushed to it."""

    __slots__ = ("_topic", "_replay", "_live", "_limit", "_waiter", "_error", "gap", "_floor")

    def __init__(self, topic: Fed, replay: list[Entry], limit: int, gap: Gap | None) -> None:
        self._topic = topic
        # Lists, not deques: an idle subscriber's queues are empty, and an empty deque
        # weighs 760 bytes where an empty list weighs 56. Takes are whole batches anyway.
        self._replay = replay
        self._live: list[Entry] = []
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None
        self._error: Exception | None = None
        self.gap = gap
        self.direct: Callable[[bytes], bool] | None = None
        # Live entries at or before this are dropped: the replay, read after this reader was
        # registered, already holds them (set by brokers whose replay needs an await).
        self._floor: Callable[[Entry], bool] | None = None

    @property
    def buffered(self) -> int:
        return len(self._live)

    def replay(self, entries: list[Entry], is_replayed: Callable[[Entry], bool]) -> None:
        """Set the replay read after registering, and drop the live entries it covers."""
        self._replay = entries
        self._live = [entry for entry in self._live if not is_replayed(entry)]
        self._floor = is_replayed

    def push(self, entries: Sequence[Entry]) -> None:
        if self._floor is not None:
            entries = [entry for entry in entries if not self._floor(entry)]
            if not entries:
                return
            self._floor = None  # positions only grow: from here on, all is new
        direct = self.direct
        if direct is not None and not self._live and not self._replay:
            # Nothing waits before these: hand them to the subscriber's connection now,
            # without waking its task (the shared one-stream frames, encoded once).
            frames = entries[0].solo if len(entries) == 1 else b"".join(e.solo for e in entries)
            if direct(frames):
                return
        # Behind means a full queue when more arrives. A reader that keeps up takes a whole
        # batch, however large; the queue stays under the limit plus one batch (a batch is
        # bounded by the publish body limit).
        if len(self._live) >= self._limit:
            self.fail(Overflow(f"{len(self._live)} events were waiting for this subscriber"))
            return
        self._live.extend(entries)
        self._wake()

    def fail(self, error: Exception, *, keep_backlog: bool = False) -> None:
        if not keep_backlog:
            self._live = []  # the subscriber resumes from history; free its backlog now
        self._error = error
        self._topic.readers.discard(self)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take_nowait(self, most: int) -> list[Entry]:
        if self._replay:
            batch, self._replay = self._replay[:most], self._replay[most:]
            return batch
        if not self._live:
            if self._error is not None:
                raise self._error
            return []
        if len(self._live) <= most:
            batch, self._live = self._live, []
            return batch
        batch, self._live = self._live[:most], self._live[most:]
        return batch

    def ready(self) -> asyncio.Future[None]:
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            if self._live or self._replay or self._error is not None:
                waiter.set_result(None)
        return waiter

    async def close(self) -> None:
        self._topic.readers.discard(self)
        self._live = []
        self._replay = []
