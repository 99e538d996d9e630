"""Keyed topics for the tests: keys of several types, and a keyed shared producer that reports
each run's start and end."""

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from typing import Annotated
from uuid import UUID

from pydantic import Field

from hub import Event, ReceivedAt, stream, topic


class Note(Event):
    n: int
    text: str = ""
    received_at: ReceivedAt


# Keys of every kind a plugin declares: text, a number, a UUID, a constrained text.
board = topic("board", Note, key=str, history=1000, description="One board per key.")
ticket = topic("ticket", Note, key=int, history=5, description="Five notes kept per ticket.")
doc = topic("doc", Note, key=UUID, description="One topic per document.")
desk = topic("desk", Note, key=Annotated[str, Field(pattern=r"^[A-Z]{3}$")], description="ABC")
inbox = topic("inbox", Note, key=str, description="One inbox per user.")
flash = topic("flash", Note, key=str, max_age=30, description="Kept 30 s.")
plain = topic("plain", Note, description="Not keyed.")


def _report(message: str) -> None:
    port = os.environ.get("HUB_TEST_REPORT_PORT")
    if port:
        with socket.create_connection(("127.0.0.1", int(port)), timeout=5) as connection:
            connection.sendall(message.encode() + b"\n")


class Quote(Event):
    symbol: str
    pid: int
    n: int


@stream("quotes", shared=True, key=str, history=100)
async def quotes(key: str) -> AsyncIterator[Quote]:
    """One poller per symbol, every 20 ms, however many subscribers."""
    _report(f"open {key}")
    try:
        n = 0
        while True:
            yield Quote(symbol=key, pid=os.getpid(), n=n)
            n += 1
            await asyncio.sleep(0.02)
    finally:
        _report(f"close {key}")
