"""A stream that ends by itself: its generator returns."""

from collections.abc import AsyncIterator

from hub import Event, stream


class Step(Event):
    n: int


@stream("steps")
async def steps(n: int = 3) -> AsyncIterator[Step]:
    """Yields `n` steps at once, then returns."""
    for k in range(n):
        yield Step(n=k)
