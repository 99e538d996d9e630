"""Streams that go wrong on purpose, to show that one stream's failure stays its own."""

import asyncio
from collections.abc import AsyncIterator

from hub import Event, stream


class Tick(Event):
    n: int


@stream("failing")
async def failing(fail_after: int = 2, interval: float = 0.0) -> AsyncIterator[Tick]:
    """Yields `fail_after` ticks, then raises."""
    for n in range(fail_after):
        yield Tick(n=n)
        await asyncio.sleep(interval)
    raise RuntimeError(f"boom after {fail_after}")


@stream("wrong_type", event=Tick)
async def wrong_type() -> AsyncIterator[Tick]:
    """Yields something that is not its event model."""
    yield {"n": 1}  # type: ignore[misc]
