import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated

from pydantic import Field

from hub import Event, stream


class Echo(Event):
    message: str
    created_at: datetime


@stream("echo")
async def echo(
    message: str = "hello",
    interval: Annotated[float, Field(ge=0, description="seconds between events")] = 1.0,
) -> AsyncIterator[Echo]:
    """Repeats `message`, at once and then every `interval` seconds."""
    while True:
        yield Echo(message=message, created_at=datetime.now(UTC))
        if interval:  # at 0, as fast as the client reads: the hub paces a busy generator
            await asyncio.sleep(interval)
