import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated

from pydantic import Field

from hub import stream
from streams.echo import Echo


@stream("reverse_echo")
async def reverse_echo(
    message: str = "hello",
    interval: Annotated[float, Field(ge=0, description="seconds between events")] = 1.0,
) -> AsyncIterator[Echo]:
    """Repeats `message` reversed, at once and then every `interval` seconds."""
    reversed_message = message[::-1]
    while True:
        yield Echo(message=reversed_message, created_at=datetime.now(UTC))
        if interval:  # at 0, as fast as the client reads: the hub paces a busy generator
            await asyncio.sleep(interval)
