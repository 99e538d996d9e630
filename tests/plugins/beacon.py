"""A shared producer that says which process runs it, for the cluster tests."""

import asyncio
import os
from collections.abc import AsyncIterator

from hub import Event, stream


class Beacon(Event):
    pid: int
    n: int


@stream("beacon", shared=True, history=1000)
async def beacon() -> AsyncIterator[Beacon]:
    """Says which process runs it, every 20 ms: once for all the hubs sharing a broker."""
    n = 0
    while True:
        yield Beacon(pid=os.getpid(), n=n)
        n += 1
        await asyncio.sleep(0.02)
