"""The local end of fan-out, shared by the brokers: runs of entries, and each subscriber's queue.

A `Run` is what arrives together (one publish, one read of a Redis feed): its entries, and the
frames a subscriber of this topic alone receives for all of them, joined once, lazily. Every
reader queues the same run by reference, so a batch of 50,000 events costs each subscriber a
reference and an offset, not a copy: memory per subscriber is O(1) per publish, not O(batch).

A one-topic subscriber takes its frames as slices of the run's shared bytes, at most
`FRAMES_AT_ONCE` bytes each (`Reader.take_frames`): what its connection holds at a time is
bounded, since asyncio's transport copies into its own buffer whatever the socket does not take
at once, and uvicorn waits for that buffer to drain before the next write.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_right
from collections.abc import Callable, Collection, Sequence
from itertools import accumulate
from typing import Protocol

from .base import FRAMES_AT_ONCE, BrokerSubscription, Entry, Gap, Overflow

__all__ = ["Fed", "Reader", "Run", "fan_out"]
# The most time fan-out keeps the loop before it lets others run.
_FAN_OUT_TURN = 0.002


class Fed(Protocol):
    """What feeds readers: it keeps them in `readers` and pushes new entries to each."""

    readers: set[Reader]

    def vacated(self) -> None:
        """Its last reader has left."""


class Run:
    """Entries that arrived together, shared by every reader of their topic in this process."""

    __slots__ = ("entries", "_frames", "_ends")

    def __init__(self, entries: Sequence[Entry]) -> None:
        self.entries = entries
        self._frames: bytes | None = None
        self._ends: list[int] | None = None

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def frames(self) -> bytes:
        """The one-topic frames of every entry, joined once."""
        if self._frames is None:
            entries = self.entries
            self._frames = (
                entries[0].solo if len(entries) == 1 else b"".join(e.solo for e in entries)
            )
        return self._frames

    def _ends_of_entries(self) -> list[int]:
        """Where each entry's frame ends in `frames`, worked out once, when first needed."""
        if self._ends is None:
            self._ends = list(accumulate(len(entry.solo) for entry in self.entries))
        return self._ends

    def offset(self, index: int) -> int:
        """Where entry `index` starts in `frames` (`len(self)`: the end)."""
        return self._ends_of_entries()[index - 1] if index else 0

    def cut(self, start: int, most: int) -> int:
        """The end (exclusive) of the entries from `start` whose frames fit in `most` bytes;
        at least one entry, however large."""
        if start == 0 and len(self.frames) <= most:
            return len(self.entries)
        end = bisect_right(self._ends_of_entries(), self.offset(start) + most, lo=start)
        return max(end, start + 1)


async def fan_out(readers: Collection[Reader], run: Run) -> None:
    """Push `run` to every reader, letting the loop serve others every few milliseconds when
    there are many. The caller keeps publishes of one topic in order (one at a time)."""
    frames = run.frames
    direct = frames if len(frames) <= FRAMES_AT_ONCE else None  # small enough to send at once
    pending = list(readers)
    started, yielded = time.monotonic(), False
    for first in range(0, len(pending), 64):
        group = pending[first : first + 64]
        if first and time.monotonic() - started > _FAN_OUT_TURN:
            await asyncio.sleep(0)
            started, yielded = time.monotonic(), True
        if yielded:  # some may have left meanwhile
            group = [reader for reader in group if reader in readers]
        for reader in group:
            reader.push(run, direct)


class Reader(BrokerSubscription):
    """One subscriber's queue in this process: a replay, then the live runs pushed to it."""

    __slots__ = (
        "_topic",
        "_replay",
        "_live",
        "_taken",
        "_queued",
        "_limit",
        "_waiter",
        "_error",
        "gap",
        "_floor",
    )

    def __init__(self, topic: Fed, replay: list[Entry], limit: int, gap: Gap | None) -> None:
        self._topic = topic
        # Lists, not deques: an idle subscriber's queues are empty, and an empty deque
        # weighs 760 bytes where an empty list weighs 56. Takes are whole batches anyway.
        self._replay = replay
        self._live: list[Run] = []
        self._taken = 0  # entries of the first live run already taken
        self._queued = 0  # entries waiting in the live runs
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None
        self._error: Exception | None = None
        self.gap = gap
        self.direct: Callable[[bytes], bool] | None = None
        self.dropped: Callable[[str], None] | None = None
        # Live entries at or before this are dropped: the replay, read after this reader was
        # registered, already holds them (set by brokers whose replay needs an await).
        self._floor: Callable[[Entry], bool] | None = None

    @property
    def buffered(self) -> int:
        return self._queued

    def replay(self, entries: list[Entry], is_replayed: Callable[[Entry], bool]) -> None:
        """Set the replay read after registering, and drop the live entries it covers."""
        self._replay = entries
        kept = [entry for run in self._live for entry in run.entries if not is_replayed(entry)]
        self._live = [Run(kept)] if kept else []
        self._taken, self._queued = 0, len(kept)
        self._floor = is_replayed

    def push(self, run: Run, frames: bytes | None = None) -> None:
        """Queue `run`, or hand `frames` (its joined frames, when small) to the subscriber's
        connection at once."""
        if self._floor is not None:
            floor = self._floor
            entries = [entry for entry in run.entries if not floor(entry)]
            if not entries:
                return
            self._floor = None  # positions only grow: from here on, all is new
            if len(entries) < len(run):
                run, frames = Run(entries), None
        direct = self.direct
        if direct is not None and frames is not None and not self._live and not self._replay:
            # Nothing waits before these: hand them to the subscriber's connection now,
            # without waking its task (the shared one-topic frames, joined once).
            if direct(frames):
                return
        # Behind means more than the limit waiting, beyond the run being taken, when more
        # arrives. A reader that keeps up takes any run, however large: the queue stays
        # under the limit plus a run (a run is bounded by the publish body limit).
        waiting = self._queued - (len(self._live[0]) - self._taken if self._live else 0)
        if waiting >= self._limit:
            overflow = Overflow(f"{self._queued} events were waiting for this subscriber")
            self.fail(overflow)
            if self.dropped is not None:
                self.dropped(str(overflow))
            return
        self._live.append(run)
        self._queued += len(run)
        self._wake()

    def fail(self, error: Exception, *, keep_backlog: bool = False) -> None:
        if not keep_backlog:
            self._clear()  # the subscriber resumes from history; free its backlog now
        self._error = error
        self._leave()
        self._wake()

    def _leave(self) -> None:
        readers = self._topic.readers
        if self in readers:
            readers.discard(self)
            if not readers:
                self._topic.vacated()

    def _clear(self) -> None:
        self._live = []
        self._taken = self._queued = 0

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take_nowait(self, most: int) -> list[Entry]:
        if self._replay:
            replayed, self._replay = self._replay[:most], self._replay[most:]
            return replayed
        if not self._live:
            if self._error is not None:
                raise self._error
            return []
        batch: list[Entry] = []
        while self._live and len(batch) < most:
            run, start = self._live[0], self._taken
            end = min(len(run), start + most - len(batch))
            batch += run.entries[start:end] if start or end < len(run) else run.entries
            self._advance(end)
        return batch

    def take_frames(self, most: int = FRAMES_AT_ONCE) -> tuple[bytes, str] | None:
        """The next entries' one-topic frames, about `most` bytes at most (at least one
        entry), and the position of the last of them; None when there are none yet.

        Slices of the runs' shared bytes: nothing is copied for a large run but the slice.
        Raises as `take_nowait` does.
        """
        if self._replay:
            count, size = 0, 0
            for entry in self._replay:
                size += len(entry.solo)
                if count and size > most:
                    break
                count += 1
            taken, self._replay = self._replay[:count], self._replay[count:]
            return b"".join(entry.solo for entry in taken), taken[-1].position
        if not self._live:
            if self._error is not None:
                raise self._error
            return None
        parts: list[bytes | memoryview] = []
        size, position = 0, ""
        while self._live and size < most:
            run, start = self._live[0], self._taken
            end = run.cut(start, most - size)
            begin, stop = run.offset(start), run.offset(end)
            if parts and stop - begin > most - size:
                break  # even its first entry would overshoot: it goes in the next take
            parts.append(
                run.frames
                if stop - begin == len(run.frames)
                else memoryview(run.frames)[begin:stop]
            )
            size += stop - begin
            position = run.entries[end - 1].position
            self._advance(end)
            if end < len(run):
                break  # the rest of this run does not fit
        if not parts:
            return None
        if len(parts) == 1:
            chunk = parts[0]
            return (chunk if isinstance(chunk, bytes) else bytes(chunk)), position
        return b"".join(parts), position

    def _advance(self, end: int) -> None:
        """Mark the first run taken up to entry `end`."""
        run = self._live[0]
        self._queued -= end - self._taken
        if end >= len(run):
            self._live.pop(0)
            self._taken = 0
        else:
            self._taken = end

    def ready(self) -> asyncio.Future[None]:
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            if self._live or self._replay or self._error is not None:
                waiter.set_result(None)
        return waiter

    async def close(self) -> None:
        self._leave()
        self._clear()
        self._replay = []
