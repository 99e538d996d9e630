"""Topics for the tests: a short history, and shared producers that report their lifecycle."""

import asyncio
import os
import socket
from collections.abc import AsyncIterator

from hub import Event, ReceivedAt, stream, topic


class Note(Event):
    n: int
    text: str = ""
    received_at: ReceivedAt


# Five events of history: enough to show a gap after six or more are missed.
short = topic("short", Note, description="A topic that forgets fast.", history=5)

# A roomy topic for ordering and fan-out tests.
notes = topic("notes", Note, description="Numbered notes.", history=10_000)


def _report(message: str) -> None:
    port = os.environ.get("HUB_TEST_REPORT_PORT")
    if port:
        with socket.create_connection(("127.0.0.1", int(port)), timeout=5) as connection:
            connection.sendall(message.encode() + b"\n")


class Tick(Event):
    n: int


@stream("ticks", shared=True, history=100)
async def ticks() -> AsyncIterator[Tick]:
    """Ticks every 20 ms, once for all subscribers."""
    _report("open ticks")
    try:
        n = 0
        while True:
            yield Tick(n=n)
            n += 1
            await asyncio.sleep(0.02)
    finally:
        _report("close ticks")


@stream("clock", shared=True, eager=True, history=10)
async def clock() -> AsyncIterator[Tick]:
    """Runs from start-up, subscribers or not."""
    _report("open clock")
    n = 0
    while True:
        yield Tick(n=n)
        n += 1
        await asyncio.sleep(0.05)
