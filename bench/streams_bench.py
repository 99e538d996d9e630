"""Streams for the benchmark: `hub serve --streams bench/streams_bench.py`.

- `s1` .. `s8`: eight generated streams, each yielding `{"n", "sent_at"}` every `interval`
  seconds (0 = as fast as the hub takes them), for the merge scenario.
- `bench`: the fan-out topic; the publisher POSTs `{"seq", "sent_at"}`.
- `quiet`: a topic nobody publishes to, for idle subscribers.
- `rooms`: a keyed topic, one per room (`rooms/r17`), for the rooms scenario.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from pydantic import Field

from hub import Event, Stream, stream, topic

MERGE_STREAMS = tuple(f"s{i}" for i in range(1, 9))


class Numbered(Event):
    n: int
    sent_at: float


class Published(Event):
    seq: int
    sent_at: float


def _generated(name: str) -> Stream:
    async def generate(
        interval: Annotated[float, Field(ge=0, description="seconds between events")] = 0.0,
    ) -> AsyncIterator[Numbered]:
        n = 0
        while True:
            yield Numbered(n=n, sent_at=time.time())
            n += 1
            await asyncio.sleep(interval)

    decorate: Callable[[Callable[..., AsyncIterator[Numbered]]], Stream] = stream(
        name, event=Numbered, description=f"Benchmark stream {name}: numbered, time-stamped."
    )
    return decorate(generate)


s1, s2, s3, s4, s5, s6, s7, s8 = (_generated(name) for name in MERGE_STREAMS)

bench = topic(
    "bench",
    Published,
    description="Benchmark fan-out topic: POST {seq, sent_at}.",
    history=100,
)

quiet = topic("quiet", Published, description="Benchmark idle topic: never published.", history=1)

rooms = topic(
    "rooms",
    Published,
    key=str,
    description="Benchmark keyed topic, one per room (rooms/r17): POST {seq, sent_at}.",
    history=100,
)
