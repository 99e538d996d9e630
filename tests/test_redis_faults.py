"""Redis trouble under a running hub: it stays quiet in the log, and every wait is bounded.

Each test runs a redis-server of its own, on a port of its own, to kill, freeze (SIGSTOP) and
start again; the shared Redis and the session's throwaway one are never touched.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator

import httpx
import pytest
from conftest import PLUGINS

from hub.brokers import BrokerUnavailable, TopicConfig, broker_from_url
from hub.brokers.redis import RedisBroker
from hub.testing import HubServer, SSEParser

CHAT = {"user": "ana", "text": "hi"}


class OwnRedis:
    """A redis-server of this test's own, on a fixed port: to kill, freeze, and start again."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[str] | None = None
        self.frozen = False

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed: install it (Debian: apt-get install redis-server)"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:  # its own word that it is ready, not a timer
            if "Ready to accept connections" in line:
                return
        raise AssertionError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        """Gone at once, as a crash or a lost machine: no goodbye to its clients."""
        assert self.process is not None and self.process.stdout is not None
        self.thaw()
        self.process.kill()
        self.process.wait(10)
        self.process.stdout.close()
        self.process = None

    def freeze(self) -> None:
        """Stopped, not gone: connections stay open, and nothing answers on them."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.process is not None and self.frozen:
            os.kill(self.process.pid, signal.SIGCONT)
        self.frozen = False

    def close(self) -> None:
        if self.process is not None:
            self.kill()


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    redis = OwnRedis()
    redis.start()
    try:
        yield redis
    finally:
        redis.close()


def hub_lines(hub: HubServer, since: int = 0) -> list[str]:
    """The hub's log from line `since` on, without uvicorn's access lines."""
    return [
        line
        for line in hub.lines[since:]
        if '"GET /' not in line and '"POST /' not in line and line.strip()
    ]


class Subscribers:
    """`count` subscribers of `stream`, each reconnecting (with its last event id, as a
    browser does) whenever its response ends; bounded in connections each."""

    def __init__(self, url: str, count: int, connections: int = 200, stream: str = "chat") -> None:
        self.stream = stream
        self.client = httpx.AsyncClient(
            base_url=url,
            timeout=httpx.Timeout(10.0),
            limits=httpx.Limits(max_connections=count + 10),
        )
        self.heads = [0] * count  # responses begun
        self.chats = [0] * count  # events of the stream received
        self.errors = [0] * count  # hub.error events received
        self.first_error = [0.0] * count  # when each got its first hub.error (monotonic)
        self.progress = asyncio.Event()
        self.tasks = [asyncio.create_task(self._run(i, connections)) for i in range(count)]

    async def _run(self, index: int, connections: int) -> None:
        cursor: str | None = None
        for _ in range(connections):
            headers = {"Last-Event-ID": cursor} if cursor else {}
            try:
                async with self.client.stream(
                    "GET", "/events", params={"streams": self.stream}, headers=headers
                ) as response:
                    assert response.status_code == 200
                    self.heads[index] += 1
                    self.progress.set()
                    parser = SSEParser()
                    async for chunk in response.aiter_bytes():
                        for event in parser.feed(chunk):
                            if event.event == self.stream:
                                self.chats[index] += 1
                            elif event.event == "hub.error":
                                self.errors[index] += 1
                                self.first_error[index] = self.first_error[index] or (
                                    time.monotonic()
                                )
                            self.progress.set()
                        cursor = parser.last_event_id or cursor
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)  # a client's reconnection delay, kept short

    async def until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    self.progress.clear()
                    await self.progress.wait()
        except TimeoutError:
            raise AssertionError(
                f"not within {timeout} s: {what} (heads {self.heads}, chats {self.chats}, "
                f"errors {self.errors})"
            ) from None

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        async with asyncio.timeout(10):
            results = await asyncio.gather(*self.tasks, return_exceptions=True)
            await self.client.aclose()
        for result in results:
            if not isinstance(result, asyncio.CancelledError):
                raise AssertionError(f"a subscriber failed: {result!r}")


async def publish_until_accepted(client: httpx.AsyncClient, timeout: float) -> float:
    """Publish to chat, again and again, until it is accepted; the seconds that took."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while (await client.post("/streams/chat/events", json=CHAT)).status_code != 201:
            await asyncio.sleep(0.1)
    return time.monotonic() - started


@pytest.mark.anyio
async def test_a_redis_outage_is_one_warning_and_one_info_whatever_the_subscribers(
    own_redis: OwnRedis,
) -> None:
    # Chat's 40 subscribers, and 2 of `clock`, a shared producer that runs from the start.
    topics = str(PLUGINS / "topics.py")
    # A lease of 1.5 s: the clock, standing by once Redis is back, tries again every 0.5 s.
    url = own_redis.url + "?prefix=quiet:&lease_ttl=1.5"
    with HubServer(topics, args=["--broker", url]) as hub:
        subscribers = Subscribers(hub.url, 40)
        clocks = Subscribers(hub.url, 2, stream="clock")
        try:
            async with httpx.AsyncClient(base_url=hub.url, timeout=10) as publisher:
                await subscribers.until(lambda: min(subscribers.heads) > 0, 20, "all connected")
                assert (await publisher.post("/streams/chat/events", json=CHAT)).status_code == 201
                await subscribers.until(lambda: min(subscribers.chats) > 0, 10, "all got one")
                await clocks.until(lambda: min(clocks.chats) > 0, 10, "clocks")
                outage = len(hub.lines)
                own_redis.kill()
                # Every subscriber is told, reconnects, and is told again, a few times over.
                await subscribers.until(
                    lambda: min(subscribers.errors) >= 3, 20, "all reconnected during the outage"
                )
                await clocks.until(lambda: min(clocks.errors) >= 3, 20, "clocks told")
                refused = await publisher.post("/streams/chat/events", json=CHAT)
                assert refused.status_code == 503
                assert refused.json()["error"]["code"] == "broker_unavailable"
                own_redis.start()
                await publish_until_accepted(publisher, 15)
                # Back: every subscriber gets events again (publish until all have one more).
                async with asyncio.timeout(20):
                    while min(subscribers.chats) < 2:
                        await publisher.post("/streams/chat/events", json=CHAT)
                        try:
                            await subscribers.until(lambda: min(subscribers.chats) >= 2, 0.5, "")
                        except AssertionError:
                            pass
                # The shared producer runs again, and its subscribers hear from it.
                running = min(clocks.chats)
                await clocks.until(lambda: min(clocks.chats) > running, 20, "clocks again")
                logged = hub_lines(hub, outage)
        finally:
            await subscribers.close()
            await clocks.close()
    assert "Traceback" not in hub.output, hub.output[-5000:]
    about_redis = [line for line in logged if "redis" in line.lower() or "broker" in line.lower()]
    away = [line for line in logged if line.startswith("WARNING") and "Redis" in line]
    back = [line for line in logged if line.startswith("INFO") and "Redis" in line]
    assert len(away) == 1 and "unavailable" in away[0], logged[:50]
    assert len(back) == 1 and "back" in back[0], logged[:50]
    assert len(about_redis) <= 3 and len(logged) <= 6, (len(logged), logged[:50])


async def read_until_end(client: httpx.AsyncClient, headers: dict[str, str]) -> tuple[str, float]:
    """A new chat subscription's whole response while Redis is frozen, and its seconds."""
    started = time.monotonic()
    async with client.stream(
        "GET", "/events", params={"streams": "chat"}, headers=headers
    ) as response:
        assert response.status_code == 200
        body = ""
        async for text in response.aiter_text():
            body += text
            if "event: hub.error" in body:
                break
    return body, time.monotonic() - started


@pytest.mark.anyio
async def test_a_frozen_redis_is_a_503_or_hub_error_within_seconds_and_recovers(
    own_redis: OwnRedis,
) -> None:
    # A command timeout of 1 s, not the default 3 s (which `hub serve` on a frozen Redis, below,
    # waits out): this test waits out several.
    timeout = 1
    url = f"{own_redis.url}?prefix=frozen:&command_timeout={timeout}"
    with HubServer(args=["--broker", url]) as hub:
        subscribers = Subscribers(hub.url, 2, connections=20)
        try:
            async with httpx.AsyncClient(base_url=hub.url, timeout=60) as client:
                await subscribers.until(lambda: min(subscribers.heads) > 0, 20, "connected")
                posted = await client.post("/streams/chat/events", json=CHAT)
                assert posted.status_code == 201
                await subscribers.until(lambda: min(subscribers.chats) > 0, 10, "got one")
                cursor = posted.json()["ids"][0]
                before = len(hub.lines)
                own_redis.freeze()
                frozen = time.monotonic()
                started = time.monotonic()
                refused = await client.post("/streams/chat/events", json=CHAT)
                publish_wait = time.monotonic() - started
                # A new subscription (no cursor: it asks where live begins) and a resuming one
                # (it opens the topic's feed and reads its history), at once.
                (fresh, fresh_wait), (resumed, resumed_wait) = await asyncio.gather(
                    read_until_end(client, {}), read_until_end(client, {"Last-Event-ID": cursor})
                )
                # The open subscribers are told too, and go on trying.
                await subscribers.until(lambda: min(subscribers.errors) > 0, 10, "told")
                told_wait = max(subscribers.first_error) - frozen
                chats = min(subscribers.chats)
                own_redis.thaw()
                recovery = await publish_until_accepted(client, 15)
                await subscribers.until(lambda: min(subscribers.chats) > chats, 10, "live again")
                logged = hub_lines(hub, before)
        finally:
            await subscribers.close()
    print(
        f"frozen Redis: 503 after {publish_wait:.2f} s, new subscription's hub.error after "
        f"{fresh_wait:.2f} s, resuming one's after {resumed_wait:.2f} s, open ones told within "
        f"{told_wait:.2f} s; publishing again {recovery:.2f} s after SIGCONT"
    )
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "broker_unavailable"
    assert publish_wait < timeout + 2
    for body, wait in ((fresh, fresh_wait), (resumed, resumed_wait)):
        assert body.startswith("retry: ") and "event: hub.error" in body, body
        error = json.loads(body.split("event: hub.error\ndata: ", 1)[1].split("\n", 1)[0])
        assert error["stream"] == "chat" and "Redis broker" in error["error"]
        assert wait < timeout + 2
    assert told_wait < timeout + 2.5  # a feed's XREAD blocks 0.5 s on top
    assert recovery < 3
    assert "Traceback" not in hub.output, hub.output[-5000:]
    # Said once, as for a Redis that went away: it stopped answering, then it is back.
    assert len(logged) == 2, logged
    assert logged[0].startswith("WARNING") and f"no answer within {timeout} s" in logged[0], logged
    assert logged[1].startswith("INFO") and "is back" in logged[1], logged


@pytest.mark.anyio
async def test_every_broker_wait_on_a_frozen_redis_is_bounded(own_redis: OwnRedis) -> None:
    broker = broker_from_url(own_redis.url + "?prefix=b:&command_timeout=1&lease_ttl=1.5")
    assert isinstance(broker, RedisBroker)
    broker.declare("t", TopicConfig())
    await broker.start()
    closed = False
    try:
        first = (await broker.publish("t", ["1"]))[0]
        lease = await broker.lease("p")
        assert lease is not None
        keeping = asyncio.create_task(lease.kept())
        reader = await broker.subscribe("t", first.position, 10)  # its feed blocks in XREAD
        own_redis.freeze()
        frozen = time.monotonic()
        waits: dict[str, float] = {}
        # A lease that cannot be renewed is given up before it lapses.
        async with asyncio.timeout(5):
            await keeping
        waits["lease kept"] = time.monotonic() - frozen
        assert asyncio.get_running_loop().time() < lease.expires  # type: ignore[attr-defined]
        # The feed gives up too, and tells its reader.
        with pytest.raises(Exception, match="Redis broker"):
            async with asyncio.timeout(5):
                await reader.take(10)
        waits["feed"] = time.monotonic() - frozen

        async def timed(name: str, call: Callable[[], Awaitable[object]]) -> None:
            started = time.monotonic()
            try:
                async with asyncio.timeout(10):
                    await call()
            except BrokerUnavailable as exc:
                assert "Redis broker" in str(exc)
            else:
                assert name == "release", f"{name} succeeded on a frozen Redis"
            waits[name] = time.monotonic() - started

        await asyncio.gather(
            *(
                timed(name, call)
                for name, call in {
                    "publish": lambda: broker.publish("t", ["2"]),
                    "last_position": lambda: broker.last_position("t"),
                    "bounds": lambda: broker.bounds("t"),
                    "subscribe": lambda: broker.subscribe("t", first.position, 10),
                    "lease": lambda: broker.lease("q"),
                    "release": lease.release,
                    "start": broker.start,
                }.items()
            )
        )
        started = time.monotonic()
        closed = True
        async with asyncio.timeout(10):
            await broker.close()
        waits["close"] = time.monotonic() - started
    finally:
        own_redis.thaw()
        if not closed:
            await broker.close()
    print("waits on a frozen Redis:", {k: round(v, 2) for k, v in waits.items()})
    assert max(waits.values()) < 3, waits


def test_serve_gives_up_on_a_frozen_redis_within_seconds(own_redis: OwnRedis) -> None:
    own_redis.freeze()
    serve = [sys.executable, "-m", "hub", "serve", "--port", "0", "--broker", own_redis.url]
    started = time.monotonic()
    refused = subprocess.run(serve, capture_output=True, text=True, timeout=60)
    waited = time.monotonic() - started
    assert refused.returncode == 2, refused.stderr
    assert "hub: error: the Redis broker at" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert waited < 6, waited  # the interpreter's start, and one bounded try
