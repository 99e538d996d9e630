import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from pydantic import Field

from hub import Event, LastPosition, stream


class Count(Event):
    n: int


@stream("counter")
async def counter(
    start: int = 0,
    interval: Annotated[float, Field(ge=0, description="seconds between events")] = 1.0,
    after: LastPosition = None,
) -> AsyncIterator[Count]:
    """Counts up from `start`; a resuming client continues exactly where it stopped."""
    # Event k of this stream is start + k, so resuming after position p continues at p + 1.
    n = start if after is None else start + after + 1
    while True:
        yield Count(n=n)
        n += 1
        if interval:  # at 0, as fast as the client reads: the hub paces a busy generator
            await asyncio.sleep(interval)
