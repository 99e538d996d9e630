"""A stream that reports its own start and end to a test over loopback TCP.

The report is sent from the generator's `finally`, so a test that receives "close" knows the
hub ran the generator's cleanup; it waits on a socket, never on a timer.
"""

import asyncio
import socket
from collections.abc import AsyncIterator

from hub import Event, stream


class Beat(Event):
    tag: str


def _report(port: int, message: str) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(message.encode() + b"\n")


@stream("lifecycle")
async def lifecycle(report_port: int, tag: str, interval: float = 0.05) -> AsyncIterator[Beat]:
    """Beats every `interval` s; tells `report_port` when it opens and when it closes."""
    _report(report_port, f"open {tag}")
    try:
        while True:
            yield Beat(tag=tag)
            await asyncio.sleep(interval)
    finally:
        _report(report_port, f"close {tag}")
