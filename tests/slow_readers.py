"""Subscribers of `chat` reading at about 1 MB/s each, in a process of their own.

    python slow_readers.py PORT SUBSCRIBERS EVENTS

Prints `subscribed` once every subscriber has its response head, then `received N` once each
has received EVENTS chat events (N is the total), and exits 0; exits 1 if that takes over a
minute. Used by tests/test_hardening.py, which measures the hub meanwhile.
"""

from __future__ import annotations

import asyncio
import sys
import time

RATE = 1_000_000  # bytes a second, per subscriber
READ = 16 * 1024


class Dechunker:
    """The body of a chunked HTTP response, as its bytes arrive."""

    def __init__(self) -> None:
        self.buffer = b""
        self.left = 0  # bytes of the current chunk still to come

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out = []
        while self.buffer:
            if self.left:
                piece = self.buffer[: self.left]
                out.append(piece)
                self.left -= len(piece)
                self.buffer = self.buffer[len(piece) :]
                continue
            line, found, rest = self.buffer.partition(b"\r\n")
            if not found:
                break
            if not line:  # the end of a chunk's data
                self.buffer = rest
                continue
            self.left = int(line, 16)
            self.buffer = rest
        return b"".join(out)


async def subscriber(port: int, events: int, subscribed: asyncio.Event, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /events?streams=chat HTTP/1.1\r\nHost: hub\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"200 OK" in head, head
    counts.append(0)
    index = len(counts) - 1
    subscribed.set()
    body, tail, marker = Dechunker(), b"", b"\nevent: chat\n"
    while counts[index] < events:
        data = await reader.read(READ)
        if not data:
            raise ConnectionError("the hub ended the stream")
        text = tail + body.feed(data)
        counts[index] += text.count(marker)
        tail = text[-(len(marker) - 1) :]
        await asyncio.sleep(len(data) / RATE)
    writer.close()


async def main(port: int, subscribers: int, events: int) -> int:
    counts: list[int] = []
    ready = [asyncio.Event() for _ in range(subscribers)]
    tasks = [
        asyncio.create_task(subscriber(port, events, ready[n], counts)) for n in range(subscribers)
    ]
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in ready)), 30)
    print("subscribed", flush=True)
    started = time.monotonic()
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    except (TimeoutError, ConnectionError) as exc:
        print(f"received {sum(counts)} of {subscribers * events}: {exc!r}", flush=True)
        return 1
    print(f"received {sum(counts)}", flush=True)
    print(f"in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    port, subscribers, events = (int(arg) for arg in sys.argv[1:4])
    sys.exit(asyncio.run(main(port, subscribers, events)))
