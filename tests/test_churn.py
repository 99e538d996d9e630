"""Issue 9: connections opened and dropped in every way, round after round, leave nothing
behind: tasks, descriptors, subscriptions and memory return to their baseline. Tasks and
descriptors must come back exactly, so one leaked in any round fails it: more rounds would
only sharpen the memory check, which bounds growth, at the cost of the suite's time."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import httpx
import pytest

from hub.testing import HubServer

ROUNDS = 7  # the first warms up; about 15 s in all
PER_ROUND = 8  # clients of each kind in a round

ARGS = [
    "--send-timeout",
    "1",
    "--header-timeout",
    "1",
    "--body-timeout",
    "1",
    "--keep-alive",
    "1",
    "--ping-interval",
    "0.5",
    "--buffer",
    "200",
]


class Churn:
    def __init__(self, server: HubServer) -> None:
        self.port = server.port
        self.url = server.url
        self.done: Counter[str] = Counter()

    async def connect(
        self, rcvbuf: int | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
        return await asyncio.open_connection(sock=sock)

    async def subscribe(
        self, query: str, rcvbuf: int | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await self.connect(rcvbuf)
        writer.write(f"GET /events?{query} HTTP/1.1\r\nHost: hub\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert b" 200 " in head, head
        return reader, writer

    # The ways a client comes and goes.

    async def reads_then_leaves(self) -> None:
        reader, writer = await self.subscribe("streams=echo,counter&interval=0.01&message=churn")
        await reader.read(4096)
        writer.close()
        await writer.wait_closed()

    async def resets(self) -> None:
        reader, writer = await self.subscribe("streams=chat,echo&echo.interval=0.05")
        await reader.read(100)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # a RST, not a FIN

    async def half_closes(self) -> None:
        reader, writer = await self.subscribe("streams=reverse_echo&interval=0.05")
        writer.write_eof()  # done sending, still reading: the hub takes it as gone
        while await reader.read(4096):
            pass
        writer.close()

    async def stalls(self) -> None:
        # Never reads: cut off by the send timeout or for falling behind (--buffer).
        reader, writer = await self.subscribe("streams=chat", rcvbuf=4096)
        await asyncio.sleep(2.5)
        writer.close()

    async def counts_to_the_end(self) -> None:
        reader, writer = await self.subscribe("streams=counter&interval=0&count=50")
        while await reader.read(65536):
            pass
        writer.close()

    async def resumes_after_a_gap(self) -> None:
        reader, writer = await self.subscribe("streams=chat&count=1&last_event_id=chat:zz9zz9.1")
        await reader.read(4096)
        writer.close()

    async def trickles_a_head(self) -> None:
        reader, writer = await self.connect()
        writer.write(b"GET /events?streams=echo HTTP/1.1\r\nHo")
        await reader.read()  # the 408, then the close
        writer.close()

    async def half_posts(self) -> None:
        reader, writer = await self.connect()
        writer.write(
            b"POST /streams/chat/events HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json"
            b'\r\nContent-Length: 5000\r\n\r\n[{"user":'
        )
        await reader.read()  # the 408, then the close
        writer.close()

    async def sends_garbage(self) -> None:
        reader, writer = await self.connect()
        writer.write(b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
        await reader.read()
        writer.close()

    async def asks_badly(self, client: httpx.AsyncClient) -> None:
        for request in (
            client.get("/events", params={"streams": "nope"}),
            client.get("/events", params={"streams": "echo", "interval": "-1"}),
            client.get(
                "/events", params={"streams": "echo"}, headers={"Last-Event-ID": "x" * 9000}
            ),
            client.head("/events", params={"streams": "echo"}),
            client.post(
                "/streams/chat/events",
                content=b"[[[[",
                headers={"content-type": "application/json"},
            ),
            client.get("/no/such/route"),
        ):
            answer = await request
            assert answer.status_code < 500

    async def publishes(self, client: httpx.AsyncClient) -> None:
        for _ in range(5):
            batch = [{"user": "churn", "text": "x" * 500}] * 100
            answer = await client.post("/streams/chat/events", json=batch)
            assert answer.status_code == 201
            await asyncio.sleep(0.1)

    async def round(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=15) as client:
            kinds: list[Callable[[], Awaitable[None]]] = [
                self.reads_then_leaves,
                self.resets,
                self.half_closes,
                self.stalls,
                self.counts_to_the_end,
                self.resumes_after_a_gap,
                self.trickles_a_head,
                self.half_posts,
                self.sends_garbage,
                lambda: self.asks_badly(client),
                lambda: self.publishes(client),
            ]
            jobs = [kind() for kind in kinds for _ in range(PER_ROUND)]
            results = await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), 30)
        for result in results:
            # A client cut off by the hub may see its connection reset: that is the point.
            if isinstance(result, BaseException) and not isinstance(
                result, (ConnectionError, asyncio.IncompleteReadError)
            ):
                raise result


def quiet(server: HubServer) -> dict[str, object]:
    """/health once the hub holds nothing but the connection asking."""
    deadline = time.monotonic() + 15
    while True:
        health = httpx.get(server.url + "/health", timeout=5).json()
        settled = (
            health["connections"] == 1
            and health["subscriptions"] == 0
            and health["open_streams"] == 0
            and health["clients"] == 0
            and health["buffered"] == 0
        )
        if settled or time.monotonic() > deadline:
            return dict(health)
        time.sleep(0.2)


@pytest.mark.timeout(120)
def test_churn_leaves_nothing_behind() -> None:
    with HubServer(args=ARGS) as server:
        churn = Churn(server)
        asyncio.run(churn.round())  # warm up: first allocations, caches, the pools
        baseline = quiet(server)
        started = time.monotonic()
        for _ in range(ROUNDS - 1):
            asyncio.run(churn.round())
        after = quiet(server)
        took = time.monotonic() - started
    summary = {key: (baseline[key], after[key]) for key in ("tasks", "open_files", "rss_bytes")}
    print(f"churned for {took:.0f} s: (baseline, after) {json.dumps(summary)}")
    assert after["connections"] == 1 and after["subscriptions"] == 0, after
    assert after["open_streams"] == 0 and after["clients"] == 0 and after["buffered"] == 0
    assert after["tasks"] == baseline["tasks"], summary
    assert after["open_files"] == baseline["open_files"], summary
    assert isinstance(after["rss_bytes"], int) and isinstance(baseline["rss_bytes"], int)
    assert after["rss_bytes"] - baseline["rss_bytes"] < 20 * 2**20, summary
    assert "Traceback" not in server.output
    assert "ERROR" not in server.output
