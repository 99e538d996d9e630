"""The redis:// broker against a real redis-server: ids as positions, one feed per topic per
process, the replay/live seam, gaps after trimming, and two hub processes sharing a topic."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
from conftest import PLUGINS
from httpx_sse import connect_sse
from support import TIMEOUT, data_of, get, read_events, room, together

from hub import Event, Hub, Registry, stream
from hub.brokers import Gap, TopicConfig, broker_from_url
from hub.brokers.redis import RedisBroker, _Connection, _order
from hub.testing import HubServer


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The server's URL with a key prefix of this test's own."""
    return f"{redis_server}?prefix=test-{uuid.uuid4().hex[:8]}:"


@pytest.fixture(scope="module")
def shared_url(redis_server: str) -> str:
    """The URL of `redis_hub`'s broker: a key prefix of this module's own."""
    return f"{redis_server}?prefix=test-{uuid.uuid4().hex[:8]}:"


@pytest.fixture(scope="module")
def redis_hub(shared_url: str) -> Iterator[HubServer]:
    """One hub on Redis for the tests that need no flag of their own; each uses a chat room
    of its own (`support.room()`): a fresh topic, as on a hub of its own."""
    with HubServer(args=["--broker", shared_url]) as hub:
        yield hub


async def started(url: str, history: int = 1000, max_age: float | None = None) -> RedisBroker:
    broker = broker_from_url(url)
    assert isinstance(broker, RedisBroker)
    broker.declare("t", TopicConfig(history=history, max_age=max_age))
    await broker.start()
    return broker


def data(entries: list) -> list[int]:  # type: ignore[type-arg]
    return [json.loads(e.body.split(b"data: ", 1)[1]) for e in entries]


@pytest.mark.anyio
async def test_positions_are_redis_ids_and_live_entries_arrive_in_order(redis_url: str) -> None:
    broker = await started(redis_url)
    try:
        start = await broker.last_position("t")
        assert start == "0-0"
        reader = await broker.subscribe("t", start, 100)
        published = await broker.publish("t", ["1", "2", "3"])
        for entry in published:
            broker.check_position(entry.position)
        assert [e.solo for e in published] == [
            f"id: t:{e.position}\nevent: t\ndata: {n}\n\n".encode()
            for e, n in zip(published, (1, 2, 3), strict=True)
        ]
        got: list = []  # type: ignore[type-arg]
        while len(got) < 3:
            got += await asyncio.wait_for(reader.take(10), 5)
        assert [e.position for e in got] == [e.position for e in published]
        broker.check_position("2r76ji.1")  # another broker's: accepted, answered with a gap
        with pytest.raises(ValueError, match="expected a topic position"):
            broker.check_position("a b")
    finally:
        await broker.close()


@pytest.mark.anyio
async def test_resume_replays_then_goes_live_with_no_gap_or_duplicate(redis_url: str) -> None:
    broker, publisher = await started(redis_url), await started(redis_url)
    try:
        first = await publisher.publish("t", [str(n) for n in range(5)])
        total = 200

        async def race() -> None:  # publishes while the subscriber registers and replays
            for n in range(5, total):
                await publisher.publish("t", [str(n)])

        racing = asyncio.create_task(race())
        reader = await broker.subscribe("t", first[1].position, 1000)
        await racing
        got: list = []  # type: ignore[type-arg]
        while len(got) < total - 2:
            got += await asyncio.wait_for(reader.take(1000), 5)
        assert data(got) == list(range(2, total))
        assert reader.gap is None
    finally:
        await broker.close()
        await publisher.close()


@pytest.mark.anyio
async def test_a_gap_when_entries_after_the_position_were_trimmed(redis_url: str) -> None:
    broker = await started(redis_url, history=10)
    try:
        # MAXLEN is approximate: Redis trims whole nodes of 100, so publish well past that.
        published = await broker.publish("t", [str(n) for n in range(300)])
        reader = await broker.subscribe("t", published[0].position, 1000)
        assert reader.gap is not None
        assert reader.gap.requested == published[0].position
        retained = await reader.take(1000)
        assert reader.gap.resumed_from == retained[0].position
        assert data(retained) == list(range(data(retained)[0], 300))  # all kept, in order
        assert data(retained)[0] > 1
    finally:
        await broker.close()


@pytest.mark.anyio
async def test_a_gap_when_redis_lost_the_history_the_position_came_from(redis_url: str) -> None:
    broker = await started(redis_url)
    try:
        before = await broker.publish("t", ["1", "2", "3"])
        # What a restart without persistence (or a failover to a lagging replica) does: the
        # stream is gone, and new events start a new one, with ids from a later millisecond.
        await broker.client.delete(broker.key("t"))
        renewed = f"{_order(before[-1].position)[0] + 1}-0"
        await broker.client.xadd(broker.key("t"), {"d": "4"}, id=renewed)
        await broker.publish("t", ["5"])
        reader = await broker.subscribe("t", before[1].position, 1000)
        assert reader.gap == Gap(before[1].position, renewed)
        assert data(await reader.take(1000)) == [4, 5]
        await reader.close()
        # A position that is still there: no gap, nothing twice.
        reader = await broker.subscribe("t", renewed, 1000)
        assert reader.gap is None
        assert data(await reader.take(1000)) == [5]
    finally:
        await broker.close()


@pytest.mark.anyio
async def test_a_cursor_from_an_empty_topic_gaps_only_if_events_were_dropped(
    redis_url: str,
) -> None:
    broker = await started(redis_url, history=10)
    try:
        assert await broker.last_position("t") == "0-0"
        await broker.publish("t", ["1", "2"])
        reader = await broker.subscribe("t", "0-0", 1000)
        assert reader.gap is None
        assert data(await reader.take(1000)) == [1, 2]
        await reader.close()
        await broker.publish("t", [str(n) for n in range(3, 300)])  # trims the first ones
        reader = await broker.subscribe("t", "0-0", 1000)
        assert reader.gap is not None and reader.gap.requested == "0-0"
        assert data(await reader.take(1000))[-1] == 299
    finally:
        await broker.close()


@pytest.mark.anyio
async def test_a_position_beyond_the_newest_gaps_and_goes_live(redis_url: str) -> None:
    broker = await started(redis_url)
    try:
        newest = (await broker.publish("t", ["1"]))[0]
        reader = await broker.subscribe("t", "99999999999999-0", 1000)
        assert reader.gap == Gap("99999999999999-0", newest.position)
        await broker.publish("t", ["2"])
        assert data(await asyncio.wait_for(reader.take(1000), 5)) == [2]
    finally:
        await broker.close()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "foreign",
    [
        "2r76ji.1",  # the memory broker's
        "1700000000000",  # no sequence: not an id this hub gives
        "99999999999999999999-0",  # past what a Redis id can hold
        "1-99999999999999999999",
    ],
)
async def test_a_position_of_another_broker_is_a_gap_with_everything_retained(
    redis_url: str, foreign: str
) -> None:
    broker, publisher = await started(redis_url), await started(redis_url)
    try:
        empty = await broker.subscribe("t", foreign, 1000)  # nothing retained yet
        assert empty.gap == Gap(foreign, "0-0")
        first = await publisher.publish("t", [str(n) for n in range(5)])
        assert data(await asyncio.wait_for(empty.take(1000), 5)) == list(range(5))
        await empty.close()
        total = 200

        async def race() -> None:  # publishes while the subscriber registers and replays
            for n in range(5, total):
                await publisher.publish("t", [str(n)])

        racing = asyncio.create_task(race())
        reader = await broker.subscribe("t", foreign, 1000)
        await racing
        assert reader.gap is not None
        assert reader.gap == Gap(foreign, first[0].position)
        got: list = []  # type: ignore[type-arg]
        while len(got) < total:
            got += await asyncio.wait_for(reader.take(1000), 5)
        assert data(got) == list(range(total))  # all retained, then live: nothing twice
        await publisher.publish("t", [str(total)])
        assert data(await asyncio.wait_for(reader.take(1000), 5)) == [total]
    finally:
        await broker.close()
        await publisher.close()


@pytest.mark.anyio
@pytest.mark.parametrize("bad", ["", "a b", "a,1", "x" * 65])
async def test_ill_formed_positions_are_refused(redis_url: str, bad: str) -> None:
    broker = await started(redis_url)
    try:
        with pytest.raises(ValueError, match="expected a topic position"):
            broker.check_position(bad)
        with pytest.raises(ValueError, match="expected a topic position"):
            await broker.subscribe("t", bad, 10)
    finally:
        await broker.close()


def test_a_memory_hubs_cursor_on_a_redis_hub_is_a_gap_not_a_refusal(redis_hub: HubServer) -> None:
    # A deployment moved from memory to Redis: the browsers' cursors are the memory broker's.
    name = room()
    posted = httpx.post(
        f"{redis_hub.url}/streams/{name}/events",
        json=[{"user": "ana", "text": "one"}, {"user": "ana", "text": "two"}],
        timeout=TIMEOUT,
    )
    assert posted.status_code == 201, posted.text
    events = read_events(
        redis_hub, {"streams": name, "count": 2}, headers={"Last-Event-ID": f"{name}:2r76ji.1"}
    )
    assert [e.event for e in events] == ["hub.gap", name, name]
    gap = json.loads(events[0].data)
    assert gap == {
        "stream": name,
        "requested": "2r76ji.1",
        "resumed_from": posted.json()["positions"][0],
    }
    assert [json.loads(e.data)["text"] for e in events[1:]] == ["one", "two"]
    assert [e.id for e in events[1:]] == posted.json()["ids"]


def test_a_redis_hubs_cursor_on_a_memory_hub_is_a_gap_not_a_refusal(
    hub_server: HubServer,
) -> None:
    # And back: a deployment moved from Redis to the memory broker.
    name = room()
    posted = httpx.post(
        f"{hub_server.url}/streams/{name}/events",
        json={"user": "ana", "text": "one"},
        timeout=TIMEOUT,
    )
    assert posted.status_code == 201, posted.text
    events = read_events(
        hub_server,
        {"streams": name, "count": 1},
        headers={"Last-Event-ID": f"{name}:1795272069791-0"},
    )
    assert [e.event for e in events] == ["hub.gap", name]
    gap = json.loads(events[0].data)
    assert (gap["stream"], gap["requested"]) == (name, "1795272069791-0")
    assert gap["resumed_from"] == posted.json()["positions"][0]
    assert json.loads(events[1].data)["text"] == "one"


@pytest.mark.anyio
async def test_max_age_trims_by_entry_id(redis_url: str) -> None:
    broker = await started(redis_url, max_age=60)
    try:
        # Two events from ten minutes ago, written with their ids, as if published then.
        old_ms = int((time.time() - 600) * 1000)
        for seq in (0, 1):
            await broker.client.xadd(broker.key("t"), {"d": "0"}, id=f"{old_ms}-{seq}")
        assert (await broker.bounds("t")) is None  # too old to count as retained
        await broker.client.xadd(broker.key("t"), {"d": "0"}, id=f"{old_ms}-2")
        fresh = await broker.publish("t", ["1", "2"])
        reader = await broker.subscribe("t", f"{old_ms}-0", 1000)
        assert reader.gap == Gap(f"{old_ms}-0", fresh[0].position)
        assert data(await reader.take(1000)) == [1, 2]
        assert await broker.bounds("t") == (fresh[0].position, fresh[1].position)
    finally:
        await broker.close()


@pytest.mark.anyio
async def test_one_feed_per_topic_per_process_stopping_after_the_last(redis_url: str) -> None:
    broker = await started(redis_url)
    try:
        start = await broker.last_position("t")
        readers = await asyncio.gather(*(broker.subscribe("t", start, 100) for _ in range(5)))
        assert len(broker._feeds) == 1  # one feed for five subscribers
        await broker.publish("t", ["7"])
        for reader in readers:
            assert data(await asyncio.wait_for(reader.take(10), 5)) == [7]
        for reader in readers[:-1]:
            await reader.close()
        assert broker.topics() == 1
        await readers[-1].close()
        assert broker._feeds == {} and broker.topics() == 0  # gone with its last reader
    finally:
        await broker.close()


def test_two_hub_processes_share_a_topic_and_resume_across_them(
    redis_hub: HubServer, shared_url: str
) -> None:
    one, name = redis_hub, room()
    with HubServer(args=["--broker", shared_url]) as two:
        posted = httpx.post(
            f"{one.url}/streams/{name}/events",
            json={"user": "ana", "text": "hi"},
            timeout=TIMEOUT,
        ).json()
        seen = read_events(
            two, {"streams": name, "count": 1}, headers={"Last-Event-ID": f"{name}:0-0"}
        )
        assert json.loads(seen[0].data)["text"] == "hi"
        assert seen[0].id == posted["ids"][0]  # one id, valid on every process
        for text in ("one", "two"):
            httpx.post(
                f"{two.url}/streams/{name}/events",
                json={"user": "bo", "text": text},
                timeout=TIMEOUT,
            )
        resumed = read_events(
            one, {"streams": name, "count": 2}, headers={"Last-Event-ID": seen[0].id}
        )
        assert [json.loads(e.data)["text"] for e in resumed] == ["one", "two"]


def test_a_subscriber_resuming_past_the_trimmed_history_is_told(redis_url: str) -> None:
    # `short` keeps 5 events; Redis trims in whole nodes of 100, so publish well past that.
    with HubServer(str(PLUGINS / "topics.py"), args=["--broker", redis_url]) as hub:
        posted = httpx.post(
            hub.url + "/streams/short/events",
            json=[{"n": n} for n in range(300)],
            timeout=TIMEOUT,
        ).json()
        events = read_events(
            hub, {"streams": "short", "count": 1}, headers={"Last-Event-ID": posted["ids"][0]}
        )
    assert [e.event for e in events] == ["hub.gap", "short"]
    gap = json.loads(events[0].data)
    assert (gap["stream"], gap["requested"]) == ("short", posted["positions"][0])
    assert events[1].id == f"short:{gap['resumed_from']}"
    assert json.loads(events[1].data)["n"] > 1  # the first ones are gone


class ThrowawayRedis:
    """A redis-server of the test's own, to stop and start again on the same port."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if "Ready to accept connections" in line:
                return
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        self.process.terminate()
        self.process.wait(10)
        self.process.stdout.close()


def test_redis_lost_and_back_under_a_running_hub() -> None:
    redis = ThrowawayRedis()
    redis.start()
    url = f"redis://127.0.0.1:{redis.port}/0?prefix=fault:"
    try:
        with HubServer(args=["--broker", url]) as hub:
            chat = {"user": "ana", "text": "hi"}
            before = httpx.post(hub.url + "/streams/chat/events", json=chat)
            assert before.status_code == 201
            with httpx.Client(base_url=hub.url, timeout=TIMEOUT) as client:
                with client.stream("GET", "/events?streams=chat") as subscribed:
                    lines = subscribed.iter_lines()
                    assert next(lines) == "retry: 3000"
                    redis.stop()  # Redis goes away under the open subscription
                    rest = "\n".join(lines)  # the response ends by itself
            assert "event: hub.error" in rest and "Redis broker" in rest
            refused = httpx.post(hub.url + "/streams/chat/events", json=chat, timeout=TIMEOUT)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "broker_unavailable"
            echo = read_events(hub, {"streams": "echo", "count": 1})  # no Redis needed
            assert echo[0].event == "echo"
            redis.start()  # back: publishing and subscribing work again
            posted = httpx.post(hub.url + "/streams/chat/events", json=chat, timeout=TIMEOUT)
            assert posted.status_code == 201
            # This Redis kept nothing across its restart: a cursor from before is told so.
            again = read_events(
                hub,
                {"streams": "chat", "count": 1},
                headers={"Last-Event-ID": before.json()["ids"][0]},
            )
            assert [e.event for e in again] == ["hub.gap", "chat"], [
                (e.event, e.data) for e in again
            ]
            assert json.loads(again[0].data)["requested"] == before.json()["positions"][0]
            assert json.loads(again[1].data)["text"] == "hi"
            assert again[1].id == posted.json()["ids"][0]
        assert hub.stopped_gracefully
    finally:
        if redis.process is not None and redis.process.poll() is None:
            redis.stop()


def test_workers_share_topics_through_redis(redis_url: str) -> None:
    with HubServer(args=["--workers", "2", "--broker", redis_url]) as hub:
        # Two clients, each on one kept-alive connection, on two different workers.
        clients: dict[int, httpx.Client] = {}
        for _ in range(60):
            client = httpx.Client(
                base_url=hub.url, timeout=TIMEOUT, limits=httpx.Limits(max_connections=1)
            )
            pid = client.get("/health").json()["pid"]
            if pid in clients:
                client.close()
            else:
                clients[pid] = client
            if len(clients) == 2:
                break
        assert len(clients) == 2, "the two workers never both answered"
        (sub_pid, subscriber), (pub_pid, publisher) = clients.items()
        try:
            start = subscriber.get("/health").json()["pid"]
            assert start == sub_pid  # still on its worker
            with subscriber.stream(
                "GET", "/events?streams=chat&count=1", headers={"Last-Event-ID": "chat:0-0"}
            ) as response:
                posted = publisher.post("/streams/chat/events", json={"user": "w", "text": "x"})
                assert posted.status_code == 201
                body = response.read().decode()
            assert f"id: chat:{posted.json()['positions'][0]}" in body
            assert sub_pid != pub_pid
        finally:
            for client in clients.values():
                client.close()


@pytest.mark.anyio
async def test_a_lease_has_one_holder_renewed_released_and_taken_over(redis_url: str) -> None:
    one, two = await started(redis_url + "&lease_ttl=0.3"), await started(redis_url)
    two.lease_ttl = 0.3
    key = one.lease_key("p")
    try:
        held = await one.lease("p")
        assert held is not None
        assert await two.lease("p") is None  # one holder at a time
        holder = (await one.client.get(key)).decode()
        assert holder.startswith(f"{socket.gethostname()}:{os.getpid()}:")
        keeping = asyncio.create_task(held.kept())
        # Renewed while kept: its time to live goes back up, again and again.
        last, renewals = await one.client.pttl(key), 0
        async with asyncio.timeout(5):
            while renewals < 3:
                await asyncio.sleep(0.02)
                ttl = await one.client.pttl(key)
                renewals += ttl > last
                last = ttl
        assert await two.lease("p") is None and not keeping.done()
        keeping.cancel()
        await held.release()  # let go: the other takes it at once
        taken = await two.lease("p")
        assert taken is not None
        # Not renewed (its holder hangs or died): it lapses and the other takes over.
        async with asyncio.timeout(5):
            while (again := await one.lease("p")) is None:
                await asyncio.sleep(one.lease_retry)
        assert again is not None
        # The old holder finds out at its next renewal, and stops.
        await asyncio.wait_for(taken.kept(), 5)
        assert (await one.client.get(key)).decode() == again.token  # type: ignore[attr-defined]
        await taken.release()  # not its own any more: leaves the new holder alone
        assert (await one.client.get(key)).decode() == again.token  # type: ignore[attr-defined]
    finally:
        await one.close()
        await two.close()


def test_a_shared_producer_runs_once_across_processes_and_moves_when_its_holder_dies(
    redis_url: str,
) -> None:
    args = ["--broker", redis_url + "&lease_ttl=1", "--streams", str(PLUGINS / "beacon.py")]
    with together(HubServer(args=args), HubServer(args=args)) as (one, two):
        servers = {one.pid: one, two.pid: two}
        with (
            httpx.Client(base_url=one.url, timeout=TIMEOUT) as c1,
            httpx.Client(base_url=two.url, timeout=TIMEOUT) as c2,
            connect_sse(c1, "GET", "/events", params={"streams": "beacon"}) as s1,
            connect_sse(c2, "GET", "/events", params={"streams": "beacon"}) as s2,
        ):
            first, second = data_of(s1, "beacon"), data_of(s2, "beacon")
            # Over three lease lifetimes, every event on both processes comes from one run in
            # one process: numbered without a break, the other process standing by.
            seen = [next(first) for _ in range(150)]
            holder = seen[0]["pid"]
            survivor = (set(servers) - {holder}).pop()
            assert {b["pid"] for b in seen} == {holder}
            assert [b["n"] for b in seen] == list(range(seen[0]["n"], seen[0]["n"] + 150))
            assert [next(second)["pid"] for _ in range(20)] == [holder] * 20
            health = {pid: get(server, "/health").json() for pid, server in servers.items()}
            assert (health[holder]["producers"], health[holder]["standby"]) == (["beacon"], [])
            assert (health[survivor]["producers"], health[survivor]["standby"]) == ([], ["beacon"])
            os.kill(holder, signal.SIGKILL)
            # The survivor's subscriber stays connected and sees the producer start afresh
            # there, once the dead holder's lease lapses.
            survivors = first if survivor == one.pid else second
            assert next(b for b in survivors if b["pid"] == survivor)["n"] == 0
            health = get(servers[survivor], "/health").json()
            assert (health["producers"], health["standby"]) == (["beacon"], [])


class Tick(Event):
    n: int


RUNS: list[str] = []


@stream("rb_shared", shared=True, eager=True, history=100)
async def rb_shared() -> AsyncIterator[Tick]:
    RUNS.append("start")
    try:
        n = 0
        while True:
            yield Tick(n=n)
            n += 1
            await asyncio.sleep(0.01)
    finally:
        RUNS.append("stop")


@pytest.mark.anyio
async def test_a_producer_that_loses_its_lease_stops_and_stands_by(redis_url: str) -> None:
    RUNS.clear()
    registry = Registry()
    registry.add(rb_shared)
    broker = broker_from_url(redis_url + "&lease_ttl=0.3")
    assert isinstance(broker, RedisBroker)
    key = broker.lease_key("rb_shared")
    async with Hub(registry, broker=broker) as hub:
        await wait_until(lambda: RUNS == ["start"])  # its generator runs
        assert hub.producers.running("rb_shared") and hub.producers.standing_by() == []
        # Another process takes the lease (this one, say, was frozen past its expiry).
        await broker.client.set(key, "elsewhere", px=600)
        await wait_until(lambda: RUNS == ["start", "stop"])  # at its next renewal
        assert hub.producers.names() == [] and hub.producers.standing_by() == ["rb_shared"]
        assert (await broker.client.get(key)) == b"elsewhere"  # left alone
        # That one goes away: its lease lapses, and this process takes over again.
        await wait_until(lambda: RUNS == ["start", "stop", "start"])
        assert hub.producers.running("rb_shared")
    assert RUNS == ["start", "stop", "start", "stop"]
    other = await started(redis_url)
    try:
        assert await other.client.get(key) is None  # let go at shutdown, for others to take
    finally:
        await other.close()


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll the hub's state, which has no event to wait on; bounded in time."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


@pytest.mark.anyio
async def test_an_eager_producer_stops_while_redis_is_away_and_runs_again_after() -> None:
    RUNS.clear()
    redis = ThrowawayRedis()
    redis.start()
    registry = Registry()
    registry.add(rb_shared)
    broker = broker_from_url(f"redis://127.0.0.1:{redis.port}/0?prefix=eager:&lease_ttl=0.3")
    try:
        async with Hub(registry, broker=broker) as hub:
            await wait_until(lambda: RUNS == ["start"])
            redis.stop()
            await wait_until(lambda: RUNS == ["start", "stop"])  # its publish failed
            assert hub.producers.standing_by() == ["rb_shared"]
            redis.start()
            await wait_until(lambda: RUNS == ["start", "stop", "start"], timeout=15)
            assert hub.producers.running("rb_shared")
    finally:
        if redis.process is not None and redis.process.poll() is None:
            redis.stop()


@pytest.mark.anyio
async def test_a_cancelled_caller_is_cancelled_whatever_redis_py_does(redis_url: str) -> None:
    # redis-py can swallow a cancellation that lands mid-command (it returns as if none came):
    # a feed, a producer or a subscriber would then outlive its cancel. Cancel at every
    # point of a few hundred commands and check that the cancellation always arrives.
    broker = await started(redis_url)
    try:
        outcomes = {"cancelled": 0, "finished first": 0}
        for n in range(300):
            calls = [
                lambda: broker.publish("t", ["1"]),
                lambda: broker.last_position("t"),
                lambda: broker.lease("p"),
            ]
            task = asyncio.create_task(calls[n % 3]())
            for _ in range(n % 7):
                await asyncio.sleep(0)
            requested = task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                outcomes["cancelled"] += 1
            else:
                assert not requested, "a cancellation was swallowed"
                outcomes["finished first"] += 1
        assert outcomes["cancelled"] > 100  # the race was really run
    finally:
        await broker.close()


def test_serve_refuses_an_unreachable_redis_or_waits_for_it_when_asked() -> None:
    redis = ThrowawayRedis()  # a free port, with nothing on it yet
    url = f"redis://127.0.0.1:{redis.port}/0?prefix=wait:"
    serve = [sys.executable, "-m", "hub", "serve", "--port", "0", "--broker", url]
    refused = subprocess.run(serve, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2
    assert f"hub: error: the Redis broker at {url} is unavailable" in refused.stderr
    waiting = subprocess.Popen(
        [*serve, "--broker-wait", "30"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert waiting.stdout is not None
    try:
        lines = iter(waiting.stdout)
        assert any("hub: waiting up to 30 s for the broker" in line for line in lines)
        redis.start()
        assert any("Uvicorn running on" in line for line in lines)
    finally:
        waiting.terminate()
        waiting.wait(10)
        waiting.stdout.close()
        if redis.process is not None:
            redis.stop()


def test_a_burst_of_subscribers_gets_every_event(redis_hub: HubServer) -> None:
    # Hundreds at once: more concurrent Redis commands than redis-py's default pool allows.
    name = room()
    received = asyncio.run(burst(redis_hub, name, subscribers=400, events=3))
    assert received == {name: 400 * 3, "hub.end": 400}


async def burst(hub: HubServer, name: str, subscribers: int, events: int) -> dict[str, int]:
    """Open `subscribers` raw connections to topic `name` at once; once every response head is
    in, publish `events` messages; count the events of each kind all of them receive."""
    heads = asyncio.Semaphore(0)
    counts: dict[str, int] = {}

    async def subscribe() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
        writer.write(
            f"GET /events?streams={name}&count={events} HTTP/1.1\r\nHost: hub\r\n\r\n".encode()
        )
        await reader.readuntil(b"\r\n\r\n")
        heads.release()
        # To the chunked body's last chunk: the connection itself stays open for the
        # keep-alive timeout (5 s) after the response.
        body = (await reader.readuntil(b"\r\n0\r\n\r\n")).decode()
        for event in re.findall(r"^event: (\S+)$", body, re.MULTILINE):
            counts[event] = counts.get(event, 0) + 1
        writer.close()

    async with asyncio.timeout(60):
        tasks = [asyncio.create_task(subscribe()) for _ in range(subscribers)]
        for _ in range(subscribers):
            await heads.acquire()
        async with httpx.AsyncClient(base_url=hub.url) as client:
            for n in range(events):
                posted = await client.post(
                    f"/streams/{name}/events", json={"user": "b", "text": str(n)}
                )
                assert posted.status_code == 201
        await asyncio.gather(*tasks)
    return counts


@pytest.mark.anyio
async def test_feeds_leaving_while_a_connection_asks_its_id_leave_no_xread_of_no_key(
    redis_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reading connection asks Redis for its id before its first XREAD. Every feed may
    # leave meanwhile (a subscriber that left at once, as in the frozen-Redis test): an
    # XREAD of no key is a syntax error, which was logged as a failure of the reading.
    asked = _Connection._client_id

    async def everyone_leaves_meanwhile(self: _Connection) -> int:
        for feed in list(self.feeds.values()):
            for reader in list(feed.readers):
                await reader.close()
        return await asked(self)

    broker = await started(redis_url)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(_Connection, "_client_id", everyone_leaves_meanwhile)
            await broker.subscribe("t", await broker.last_position("t"), 10)
            connection = broker.reading.connections[0]
            await asyncio.wait_for(_until(lambda: connection.client_id is not None), 5)
        # The connection reads on for the next subscriber, and nothing failed.
        reader = await broker.subscribe("u", await broker.last_position("u"), 10)
        await broker.publish("u", ["1"])
        assert data(await asyncio.wait_for(reader.take(10), 5)) == [1]
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        await broker.close()


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)
