"""Limits on what clients may take: open streams, in all and per client address, and the
rate of publishing per client address.

Every refusal is a `RequestError` with a `Retry-After`, decided before anything opens. The
limits that protect the process itself come from its open-file limit, so that it refuses
cleanly (a 503 it can still write) instead of failing to accept (EMFILE, which answers no
one and says nothing).
"""

from __future__ import annotations

import logging
import random
import resource
import time
from collections import Counter
from typing import NamedTuple

from .errors import RequestError
from .settings import Settings

__all__ = ["FileLimit", "Limits", "raise_open_file_limit"]

logger = logging.getLogger("hub")


class FileLimit(NamedTuple):
    """The process's open-file limit, and what the hub makes of it."""

    soft: int
    hard: int
    raised_from: int | None  # the soft limit before `raise_open_file_limit`, if it rose

    @property
    def connections(self) -> int:
        """Connections of every kind accepted at once; past it, a new one gets a 503 at once.

        Leaves a twentieth (at least 64 files) for the process's own: plugins, logs, the
        broker's connections, the listening socket."""
        return max(self.soft - max(64, self.soft // 20), 1)

    @property
    def streams(self) -> int:
        """The default for `--max-connections`: room is left for requests that are not
        streams (publishes, /health), so that those are still answered at the limit."""
        return max(self.connections - max(16, self.soft // 50), 1)


def raise_open_file_limit() -> FileLimit:
    """Raise the soft open-file limit to the hard one, where it is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return FileLimit(soft, hard, None)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):  # e.g. a hard limit the kernel caps lower (nr_open)
        return FileLimit(soft, hard, None)
    return FileLimit(target, hard, soft)


def open_file_limit() -> FileLimit:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return FileLimit(soft, hard, None)


class Limits:
    """Counts the open streams of this process and of each client address, and meters each
    address's publishing with a token bucket (`publish_rate` a second, bursts of twice that).

    Memory stays bounded by the clients active now: a client's entry goes when its last
    stream closes, and a bucket once it is full again.
    """

    def __init__(self, settings: Settings, files: FileLimit | None = None) -> None:
        self.files = files if files is not None else open_file_limit()
        self.max_streams = settings.max_connections or self.files.streams
        self.max_connections = max(self.files.connections, self.max_streams + 16)
        self.per_client = settings.max_connections_per_client
        self.rate = settings.publish_rate
        self.burst = 2 * self.rate
        self.streams = 0
        self.connections = 0  # counted by the HTTP protocol, when it is the hub's
        self._by_client: Counter[str] = Counter()
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when)
        self._swept = time.monotonic()

    def describe(self) -> str:
        files = self.files
        raised = f", raised from {files.raised_from}" if files.raised_from is not None else ""
        per_client = f"{self.per_client} streams" if self.per_client else "no stream limit"
        rate = f"publishing {self.rate:g} events/s" if self.rate else "no publish rate limit"
        return (
            f"open-file limit {files.soft} (hard {files.hard}{raised}): up to "
            f"{self.max_streams} open streams (--max-connections), {self.max_connections} "
            f"connections in all; per client: {per_client}, {rate}"
        )

    def admit(self, client: str) -> None:
        """Count a new stream from `client`, or refuse it; `release` it when it ends."""
        if self.streams >= self.max_streams:
            raise RequestError(
                503,
                "too_many_connections",
                f"this hub serves {self.max_streams} streams at most and is full; retry later",
                retry_after=_jittered(5),
                load=True,
                limit=self.max_streams,
            )
        if self.per_client and self._by_client[client] >= self.per_client:
            raise RequestError(
                429,
                "too_many_connections_from_client",
                f"{client} has {self.per_client} streams open, the most one client address "
                "may have; close one, or select several streams in one request",
                retry_after=_jittered(10),
                load=True,
                limit=self.per_client,
            )
        self.streams += 1
        self._by_client[client] += 1

    def release(self, client: str) -> None:
        self.streams -= 1
        self._by_client[client] -= 1
        if self._by_client[client] <= 0:
            del self._by_client[client]

    def clients(self) -> int:
        return len(self._by_client)

    def take_publish(self, client: str, events: int) -> None:
        """Meter `events` published by `client`, or refuse them all (429 `rate_limited`)."""
        if not self.rate:
            return
        now = time.monotonic()
        tokens, when = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate)
        if events > tokens:
            self._buckets[client] = (tokens, now)
            if events > self.burst:
                message = (
                    f"a batch of {events} events is more than {client} may publish at once "
                    f"({self.burst:g}: --publish-rate {self.rate:g}/s, bursts of twice that); "
                    "send smaller batches"
                )
                wait = self.burst / self.rate
            else:
                message = (
                    f"{client} publishes faster than {self.rate:g} events/s "
                    f"(bursts of {self.burst:g}); retry later"
                )
                wait = (events - tokens) / self.rate
            raise RequestError(
                429, "rate_limited", message, retry_after=max(wait, 1.0), limit=self.rate
            )
        self._buckets[client] = (tokens - events, now)
        if len(self._buckets) > 1024 and now - self._swept > 10:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        # A bucket that has filled up again is the same as none.
        self._swept = now
        full = [
            client
            for client, (tokens, when) in self._buckets.items()
            if tokens + (now - when) * self.rate >= self.burst
        ]
        for client in full:
            del self._buckets[client]


def _jittered(seconds: float) -> float:
    # Refused clients come back spread out, not all at once.
    return round(seconds * random.uniform(1.0, 1.5), 1)
