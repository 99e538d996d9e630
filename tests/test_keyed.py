"""Keyed topics (`family/key`) end to end, on a real `hub serve`: separate histories per key,
names in the cursor, the query, the publish path and Python, key validation, the catalog,
grants with `{sub}`, keyed shared producers, and the bounds on what keys may cost (memory
broker: --max-topics; Redis: reading connections, idle expiry)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis
from httpx_sse import aconnect_sse, connect_sse
from support import TIMEOUT, Reports, data_of, get, positions, read_events, together

from hub import Hub, Registry
from hub import publish as hub_publish
from hub.brokers import TopicConfig
from hub.brokers.memory import MemoryBroker
from hub.subscription import RequestError
from hub.testing import HubServer, acollect

PLUGIN = str(Path(__file__).parent / "keyed" / "streams.py")
KEY = "a test secret that is long enough for HS256 (32+ bytes)"


def unique(prefix: str = "k") -> str:
    """A key no other test uses: tests share one server."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def publish(server: HubServer, name: str, body: Any, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(
        f"{server.url}/streams/{name}/events", json=body, headers=headers, timeout=TIMEOUT
    )


def notes(*numbers: int) -> list[dict[str, Any]]:
    return [{"n": n} for n in numbers]


def numbers(events: list[Any]) -> list[int]:
    return [json.loads(e.data)["n"] for e in events]


def error(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


@pytest.fixture(scope="module")
def server() -> Iterator[HubServer]:
    with HubServer(PLUGIN, args=["--ping-interval", "0.5", "--no-entry-points"]) as hub:
        yield hub


def test_two_keys_keep_separate_histories_and_positions(server: HubServer) -> None:
    lobby, kitchen = f"board/{unique()}", f"board/{unique()}"
    first = publish(server, lobby, notes(1, 2, 3))
    second = publish(server, kitchen, notes(10, 20))
    assert first.status_code == second.status_code == 201, first.text
    lobby_positions, kitchen_positions = first.json()["positions"], second.json()["positions"]
    # Each key counts its own events from 1, in a history of its own.
    assert [p.split(".")[1] for p in lobby_positions] == ["1", "2", "3"]
    assert [p.split(".")[1] for p in kitchen_positions] == ["1", "2"]
    assert lobby_positions[0].split(".")[0] != kitchen_positions[0].split(".")[0]
    assert first.json()["ids"] == [f"{lobby}:{p}" for p in lobby_positions]
    for name, published, expected in [
        (lobby, lobby_positions, [1, 2, 3]),
        (kitchen, kitchen_positions, [10, 20]),
    ]:
        start = published[0].rsplit(".", 1)[0] + ".0"
        query = {"streams": name, "last_event_id": f"{name}:{start}"}
        events = read_events(server, query, len(expected))
        assert [e.event for e in events] == [name] * len(expected)
        assert numbers(events) == expected
        assert [e.id for e in events] == [f"{name}:{p}" for p in published]


def test_one_response_carries_two_keys_and_a_generated_stream_and_resumes_all_three(
    server: HubServer,
) -> None:
    lobby, kitchen = f"board/{unique('l')}", f"board/{unique('m')}"
    start = {
        name: publish(server, name, notes(0)).json()["positions"][0] for name in (lobby, kitchen)
    }
    publish(server, lobby, notes(1, 2, 3))
    publish(server, kitchen, notes(4, 5))
    cursor = f"{kitchen}:{start[kitchen]},{lobby}:{start[lobby]}"
    params = {
        "streams": f"{lobby},{kitchen},echo",
        "echo.interval": "0",
        "echo.count": "2",
        # Scoped parameters name the key's topic in full.
        f"{lobby}.count": "3",
        f"{kitchen}.count": "2",
        "last_event_id": cursor,
    }
    events = read_events(server, params)  # ends by itself: every stream reaches its count
    assert sorted(e.event for e in events) == sorted(["echo"] * 2 + [kitchen] * 2 + [lobby] * 3)
    by_stream = {name: [e for e in events if e.event == name] for name in (lobby, kitchen)}
    assert numbers(by_stream[lobby]) == [1, 2, 3] and numbers(by_stream[kitchen]) == [4, 5]
    last = events[-1].id
    # The cursor names each key as its own stream, sorted, the slash as it is.
    assert [part.split(":")[0] for part in last.split(",")] == sorted(["echo", lobby, kitchen])
    assert positions(last)["echo"] == "1"
    # More on both keys; the cursor resumes all three exactly where they stopped.
    publish(server, lobby, notes(6))
    publish(server, kitchen, notes(7, 8))
    params = {
        "streams": f"{lobby},{kitchen},echo",
        "echo.interval": "0",
        "echo.count": "1",
        f"{lobby}.count": "1",
        f"{kitchen}.count": "2",
    }
    again = read_events(server, params, headers={"Last-Event-ID": last})
    assert numbers([e for e in again if e.event == lobby]) == [6]
    assert numbers([e for e in again if e.event == kitchen]) == [7, 8]
    assert positions([e.id for e in again if e.event == "echo"][0])["echo"] == "2"
    assert not [e for e in again if e.event.startswith("hub.")]


@pytest.mark.anyio
async def test_a_first_subscriber_of_new_keys_starts_live_without_a_gap(server: HubServer) -> None:
    # Each key's topic is made as the subscription fixes where it starts, before it reads:
    # making the second must not drop the first, still empty and without a reader yet.
    first, second = f"board/{unique('n')}", f"board/{unique('o')}"
    ready = asyncio.Event()

    async def subscribe() -> list[Any]:
        received = []
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
            params = {"streams": f"{first},{second}"}
            async with aconnect_sse(client, "GET", "/events", params=params) as source:
                async for sse in source.aiter_sse():
                    if not sse.data:  # the retry hint, then the opening id: both start here
                        if sse.id:
                            ready.set()
                        continue
                    received.append(sse)
                    if len(received) == 2:
                        return received
        return received

    subscribing = asyncio.create_task(subscribe())
    await asyncio.wait_for(ready.wait(), 10)
    for name in (first, second):
        answer = await asyncio.to_thread(publish, server, name, {"n": 1})
        assert answer.status_code == 201
    events = await asyncio.wait_for(subscribing, 10)
    assert sorted(e.event for e in events) == sorted([first, second])  # no hub.gap


@pytest.mark.anyio
async def test_publish_from_python_and_collect_in_process() -> None:
    registry = Registry.discover([PLUGIN], entry_points=False)
    async with Hub(registry) as hub:
        name = f"board/{unique()}"
        start = await hub.broker.last_position(name)
        assert await hub_publish(name, {"n": 1}, {"n": 2}) == [
            start.replace(".0", ".1"),
            start.replace(".0", ".2"),
        ]
        # The key's type writes its name: ticket/007 is ticket/7.
        positions_ = await hub_publish("ticket/007", {"n": 7})
        events = await acollect(
            f"{name},ticket/7,echo",
            4,
            params={"echo.count": 1, "echo.interval": 0},
            last_event_id=f"{name}:{start},ticket/7:{positions_[0].replace('.1', '.0')}",
            hub=hub,
        )
        assert sorted(e.event for e in events) == [name, name, "echo", "ticket/7"]
        with pytest.raises(ValueError, match="key 'x' of stream 'ticket'"):
            await hub_publish("ticket/x", {"n": 1})
        with pytest.raises(RequestError) as refused:
            await acollect("board", 1, hub=hub)
        assert refused.value.status == 422 and refused.value.code == "invalid_key"


@pytest.mark.parametrize(
    ("name", "status", "code", "says"),
    [
        ("ticket/abc", 422, "invalid_key", "valid integer"),
        ("board/a b", 422, "invalid_key", "A-Z a-z 0-9 _ - ~"),
        ("board/a.b", 422, "invalid_key", "A-Z a-z 0-9 _ - ~"),
        ("board/%C3%A9", 422, "invalid_key", "A-Z a-z 0-9 _ - ~"),
        ("board/" + "x" * 129, 422, "invalid_key", "1 to 128"),
        ("board/", 422, "invalid_key", "1 to 128"),
        ("desk/abc", 422, "invalid_key", "pattern"),
        ("doc/not-a-uuid", 422, "invalid_key", "UUID"),
        ("board", 422, "invalid_key", "is keyed: name one of its topics as 'board/<key>'"),
        ("echo/x", 404, "unknown_stream", "stream 'echo' takes no key"),
        ("nope/x", 404, "unknown_stream", "unknown stream 'nope/x'"),
    ],
)
def test_bad_names_are_refused_naming_the_stream_and_the_key(
    server: HubServer, name: str, status: int, code: str, says: str
) -> None:
    response = get(server, f"/events?streams={name},echo")
    assert response.status_code == status, response.text
    assert error(response)["code"] == code and says in error(response)["message"]
    if code == "invalid_key":
        (problem,) = error(response)["errors"]
        family, _, key = name.partition("/")
        assert problem["stream"] == family
        assert problem["key"] == (key.replace("%C3%A9", "é") if "/" in name else None)
    if "/" in name and name.count("/") == 1 and not name.endswith("/"):
        posted = publish(server, name, {"n": 1})
        assert posted.status_code == status, posted.text
        assert error(posted)["code"] == code


def test_a_key_is_named_as_its_type_writes_it(server: HubServer) -> None:
    ticket = 10_000 + uuid.uuid4().int % 10_000
    posted = publish(server, f"ticket/00{ticket}", {"n": 1})
    assert posted.status_code == 201 and posted.json()["ids"][0].startswith(f"ticket/{ticket}:")
    document = uuid.uuid4()
    posted = publish(server, f"doc/{str(document).upper()}", {"n": 1})
    assert posted.json()["ids"][0].startswith(f"doc/{document}:")
    assert publish(server, "desk/ABC", {"n": 1}).status_code == 201
    # Two spellings of one key in a selection are one stream.
    params = {"streams": f"ticket/{ticket},ticket/0{ticket}", "count": "1"}
    cursor = f"ticket/{ticket}:" + posted.json()["positions"][0].split(".")[0] + ".0"
    events = read_events(server, params, headers={"Last-Event-ID": cursor})
    assert [e.event for e in events if not e.event.startswith("hub.")] == [f"ticket/{ticket}"]


def test_the_catalog_lists_a_family_once_and_describes_one_key(server: HubServer) -> None:
    catalog = get(server, "/streams").json()["streams"]
    by_name = {s["name"]: s for s in catalog}
    assert not [s for s in catalog if "/" in s["name"]]
    assert by_name["board"]["keyed"] is True and by_name["board"]["key"] == {"type": "string"}
    assert by_name["ticket"]["key"] == {"type": "integer"}
    assert by_name["doc"]["key"] == {"type": "string", "format": "uuid"}
    assert by_name["desk"]["key"]["pattern"] == "^[A-Z]{3}$"
    assert by_name["echo"]["keyed"] is False and by_name["echo"]["key"] is None
    assert get(server, "/streams/board").json() == by_name["board"]
    name = f"board/{unique()}"
    topics = get(server, "/health").json()["topics"]
    described = get(server, f"/streams/{name}").json()
    assert described == {**by_name["board"], "name": name, "position": None}
    # Looking does not make a topic.
    assert get(server, "/health").json()["topics"] == topics
    newest = publish(server, name, notes(1, 2)).json()["positions"][-1]
    assert get(server, f"/streams/{name}").json()["position"] == newest
    assert get(server, "/streams/ticket/abc").status_code == 422
    assert get(server, "/streams/echo/x").status_code == 404
    # A plain topic's publish path is not a key of it; a keyed family's `events` is a key.
    assert get(server, "/streams/plain/events").status_code == 405
    assert get(server, "/streams/board/events").json()["name"] == "board/events"
    # The document gives each keyed family its publish path, the key a path parameter.
    paths = get(server, "/openapi.json").json()["paths"]
    operation = paths["/streams/board/{key}/events"]["post"]
    assert [p["name"] for p in operation["parameters"] if p["in"] == "path"] == ["key"]


def token(sub: str, subscribe: list[str], publish: list[str] | None = None) -> str:
    claims = {"sub": sub, "exp": int(time.time()) + 300}
    claims["hub"] = {"subscribe": subscribe, "publish": publish or []}  # type: ignore[assignment]
    return jwt.encode(claims, KEY, "HS256")


def test_grants_match_full_names_with_globs_and_sub() -> None:
    args = ["--no-builtin-streams", "--no-entry-points", "--public", "desk/*"]
    with HubServer(PLUGIN, args=args, env={"HUB_AUTH_KEY": KEY}) as server:
        ana = token("ana", ["inbox/{sub}", "board/*"], ["inbox/*"])
        bob = token("bob", ["inbox/{sub}"])
        weird = token("*", ["inbox/{sub}"])  # a sub that is no key matches nothing

        def status(name: str, who: str | None) -> int:
            headers = {"Authorization": f"Bearer {who}"} if who else {}
            with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
                with client.stream(
                    "GET", "/events", params={"streams": name}, headers=headers
                ) as response:
                    return response.status_code

        assert status("inbox/ana", ana) == 200
        assert status("inbox/bob", ana) == 403  # one user is refused another's inbox
        assert status("inbox/bob", bob) == 200
        assert status("inbox/ana", bob) == 403
        assert status("inbox/x", weird) == 403
        assert status(f"board/{unique()}", ana) == 200  # a glob over every key
        assert status(f"board/{unique()}", bob) == 403
        assert status("desk/ABC", None) == 200  # --public with a glob over keys
        assert status("inbox/ana", None) == 401
        # Publishing to bob's inbox is ana's grant; bob reads it.
        assert publish(server, "inbox/bob", {"n": 5}, ana).status_code == 201
        assert publish(server, "inbox/bob", {"n": 5}, bob).status_code == 403

        # The catalog shows a family to whoever may read or publish some key of it.
        def names(who: str | None) -> set[str]:
            headers = {"Authorization": f"Bearer {who}"} if who else {}
            catalog = httpx.get(server.url + "/streams", headers=headers, timeout=TIMEOUT)
            return {s["name"] for s in catalog.json()["streams"]}

        assert {"inbox", "board", "desk"} <= names(ana)
        assert "board" not in names(bob) and "inbox" in names(bob)
        assert names(None) == {"desk"}


def _subscribe_collecting(url: str, name: str, want: int) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        with connect_sse(client, "GET", "/events", params={"streams": name}) as source:
            for sse in source.iter_sse():
                if sse.event == name:
                    seen.append(json.loads(sse.data))
                    if len(seen) == want:
                        break
    return seen


@pytest.mark.anyio
async def test_a_keyed_shared_producer_runs_once_per_key_in_use(reports: Reports) -> None:
    env = {"HUB_TEST_REPORT_PORT": str(reports.port)}
    with HubServer(PLUGIN, args=["--no-entry-points"], env=env) as server:
        runs = await asyncio.gather(
            asyncio.to_thread(_subscribe_collecting, server.url, "quotes/AAA", 10),
            asyncio.to_thread(_subscribe_collecting, server.url, "quotes/AAA", 10),
            asyncio.to_thread(_subscribe_collecting, server.url, "quotes/BBB", 10),
            asyncio.to_thread(
                lambda: [reports.next() for _ in range(4)]  # two opens, then two closes
            ),
        )
        *seen, said = runs
        assert sorted(said[:2]) == ["open AAA", "open BBB"]  # once per key, not per subscriber
        assert sorted(said[2:]) == ["close AAA", "close BBB"]  # after the last left each
        assert {q["symbol"] for q in seen[0] + seen[1]} == {"AAA"}
        assert {q["symbol"] for q in seen[2]} == {"BBB"}
        health = get(server, "/health").json()
        assert health["producers"] == [] and health["subscriptions"] == 0
        # A key that is no valid key runs nothing.
        assert get(server, "/events?streams=quotes/a.b").status_code == 422


@pytest.mark.anyio
async def test_memory_keyed_topics_stay_within_max_topics_and_a_dropped_one_gaps() -> None:
    broker = MemoryBroker(max_topics=100)
    broker.declare("room", TopicConfig(history=10), keyed=True)
    broker.declare("plain", TopicConfig(history=10))
    first = (await broker.publish("room/0", ['{"n":0}']))[0].position
    for key in range(1, 10_000):
        await broker.publish(f"room/{key}", [f'{{"n":{key}}}'])
        assert broker.topics() <= 101  # the keyed ones, and the plain one
    # A subscriber keeps its topic however old, and a key with no history goes with its last.
    held = await broker.subscribe("room/9999", await broker.last_position("room/9999"), 10)
    for key in range(10_000, 10_300):
        await broker.publish(f"room/{key}", ['{"n":1}'])
    assert "room/9999" in broker._keyed
    await held.close()
    probe = await broker.subscribe("room/probe", await broker.last_position("room/probe"), 10)
    assert "room/probe" in broker._keyed
    await probe.close()
    assert "room/probe" not in broker._keyed  # idle and empty: gone at once
    # The first key was dropped long ago: its old cursor is a gap in the key's new topic.
    await broker.publish("room/0", ['{"n":1}'])
    resumed = await broker.subscribe("room/0", first, 10)
    assert resumed.gap is not None and resumed.gap.requested == first
    assert [e.position for e in await resumed.take(10)] == [resumed.gap.resumed_from]
    await resumed.close()


def test_max_topics_bounds_a_serving_hub_and_the_health_counts_them(server: HubServer) -> None:
    del server  # a hub of its own, with a small bound
    with HubServer(PLUGIN, args=["--max-topics", "20", "--no-entry-points"]) as small:
        plain = get(small, "/health").json()["topics"]
        cursors = {}
        with httpx.Client(base_url=small.url, timeout=TIMEOUT) as client:
            for key in range(200):
                answer = client.post(f"/streams/board/k{key}/events", json={"n": key})
                assert answer.status_code == 201
                cursors[key] = answer.json()["ids"][0]
                assert client.get("/health").json()["topics"] <= plain + 20
        old = read_events(small, {"streams": "board/k0"}, 1, headers={"Last-Event-ID": cursors[0]})
        assert old[0].event == "hub.gap"
        # A key still held resumes where it was, with no gap.
        publish(small, "board/k199", {"n": 200})
        recent = read_events(small, {"streams": "board/k199"}, 1, {"Last-Event-ID": cursors[199]})
        assert recent[0].event == "board/k199" and json.loads(recent[0].data)["n"] == 200


# Redis.


@pytest.fixture
def redis_url(redis_server: str) -> str:
    return f"{redis_server}?prefix=keyed-{uuid.uuid4().hex[:8]}:"


@pytest.fixture(scope="module")
def shared_url(redis_server: str) -> str:
    return f"{redis_server}?prefix=keyed-{uuid.uuid4().hex[:8]}:"


@pytest.fixture(scope="module")
def redis_hub(shared_url: str) -> Iterator[HubServer]:
    """One hub on Redis with the flags of the two tests that share it, each on keys of its own."""
    args = ["--broker", shared_url, "--max-streams", "100", "--idle-ttl", "600"]
    with HubServer(PLUGIN, args=[*args, "--no-entry-points"]) as hub:
        yield hub


def _readers(redis_url: str) -> int:
    prefix = redis_url.split("prefix=")[1]
    client = redis.Redis.from_url(redis_url.split("?")[0])
    try:
        return sum(1 for c in client.client_list() if c.get("name") == f"{prefix}read")
    finally:
        client.close()


@pytest.mark.anyio
async def test_redis_reads_a_thousand_keys_over_four_connections(
    redis_hub: HubServer, shared_url: str
) -> None:
    server, run = redis_hub, unique("r")
    keys = [f"board/{run}-{i}" for i in range(1000)]
    groups = [keys[i : i + 100] for i in range(0, 1000, 100)]
    heads, done = asyncio.Semaphore(0), asyncio.Semaphore(0)
    release = asyncio.Event()

    async def listen(group: list[str]) -> set[str]:
        got: set[str] = set()
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
            async with aconnect_sse(
                client, "GET", "/events", params={"streams": ",".join(group)}
            ) as source:
                assert source.response.status_code == 200
                events = source.aiter_sse()
                async for sse in events:  # the opening id: where every topic starts
                    if sse.id:
                        break
                heads.release()
                async for sse in events:
                    assert not sse.event.startswith("hub."), sse.data
                    if sse.event in group:
                        got.add(sse.event)
                        if len(got) == len(group):
                            break
                done.release()
                await release.wait()  # stays subscribed while the test looks
        return got

    listening = [asyncio.create_task(listen(group)) for group in groups]
    for _ in groups:
        await asyncio.wait_for(heads.acquire(), 30)

    async def publish_all(some: list[str]) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
            for key in some:
                answer = await client.post(f"/streams/{key}/events", json={"n": 1})
                assert answer.status_code == 201

    await asyncio.gather(*(publish_all(keys[i::4]) for i in range(4)))  # four at a time
    for _ in groups:
        await asyncio.wait_for(done.acquire(), 60)
    assert 1 <= await asyncio.to_thread(_readers, shared_url) <= 4
    assert get(server, "/health").json()["topics"] == 1000
    release.set()
    received = await asyncio.wait_for(asyncio.gather(*listening), 60)
    assert [len(got) for got in received] == [100] * 10  # every key's event arrived


def test_redis_an_idle_keys_stream_expires(redis_hub: HubServer, shared_url: str) -> None:
    server, key = redis_hub, unique()  # --idle-ttl 600
    prefix = shared_url.split("prefix=")[1]
    client = redis.Redis.from_url(shared_url.split("?")[0])
    try:
        assert publish(server, f"board/{key}", {"n": 1}).status_code == 201
        ttl = client.pttl(f"{prefix}topic:board/{key}")
        assert 590_000 < ttl <= 600_000
        # A family's max_age is its keys' idle time.
        assert publish(server, f"flash/{key}", {"n": 1}).status_code == 201
        assert 0 < client.pttl(f"{prefix}topic:flash/{key}") <= 30_000
        # A topic that is not keyed lives on as before: it does not expire.
        assert publish(server, "plain", {"n": 1}).status_code == 201
        assert client.pttl(f"{prefix}topic:plain") == -1
    finally:
        client.close()


def test_redis_a_keyed_producer_runs_once_per_key_in_the_cluster_and_moves_when_killed(
    redis_url: str,
) -> None:
    args = ["--broker", redis_url + "&lease_ttl=1", "--no-entry-points"]
    with together(HubServer(PLUGIN, args=args), HubServer(PLUGIN, args=args)) as (one, two):
        servers = {one.pid: one, two.pid: two}
        with (
            httpx.Client(base_url=one.url, timeout=TIMEOUT) as c1,
            httpx.Client(base_url=two.url, timeout=TIMEOUT) as c2,
            connect_sse(c1, "GET", "/events", params={"streams": "quotes/AAA"}) as s1,
            connect_sse(c2, "GET", "/events", params={"streams": "quotes/AAA"}) as s2,
            connect_sse(c2, "GET", "/events", params={"streams": "quotes/BBB"}) as s3,
        ):
            first, second = data_of(s1, "quotes/AAA"), data_of(s2, "quotes/AAA")
            seen = [next(first) for _ in range(100)]
            holder = seen[0]["pid"]
            assert {q["pid"] for q in seen} == {holder}  # one run in the cluster
            assert [q["n"] for q in seen] == list(range(seen[0]["n"], seen[0]["n"] + 100))
            assert next(second)["pid"] == holder
            assert next(data_of(s3, "quotes/BBB"))["pid"] == two.pid  # its only subscriber
            survivor = (set(servers) - {holder}).pop()
            health = get(servers[survivor], "/health").json()
            assert "quotes/AAA" in health["standby"]
            os.kill(holder, signal.SIGKILL)
            survivors = first if survivor == one.pid else second
            taken = next(q for q in survivors if q["pid"] == survivor)
            assert taken["n"] == 0  # started afresh there, once the dead one's lease lapsed
            assert "quotes/AAA" in get(servers[survivor], "/health").json()["producers"]
