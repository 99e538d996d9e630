"""Topics end to end: publish, fan-out, history and resume, gaps, slow consumers, shared
producers; a real `hub serve`, real clients."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse
from support import TIMEOUT, Reports, get, positions, read_events

from hub.testing import HubServer

PLUGINS = str(Path(__file__).parent / "plugins")


def publish(server: HubServer, name: str, body: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/streams/{name}/events", json=body, timeout=TIMEOUT)


def note(n: int, text: str = "") -> dict[str, Any]:
    return {"n": n, "text": text}


async def subscribe(
    server: HubServer,
    params: dict[str, Any],
    want: int,
    *,
    name: str = "notes",
    headers: dict[str, str] | None = None,
    ready: asyncio.Event | None = None,
) -> list[ServerSentEvent]:
    """Collect `want` events of stream `name` (and any control events) from one subscription.

    With `ready`, the selection should include `echo` with `echo.count=1`: its first frame
    comes after the hub has fixed where the topic starts, so `ready` is set once publishing
    can no longer be missed.
    """
    received: list[ServerSentEvent] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        async with aconnect_sse(
            client, "GET", "/events", params=params, headers=dict(headers or {})
        ) as source:
            assert source.response.status_code == 200
            async for sse in source.aiter_sse():
                if not sse.data:
                    continue
                if sse.event == "echo" and ready is not None:
                    ready.set()
                    continue
                received.append(sse)
                if sum(e.event == name for e in received) == want:
                    break
    return received


def numbers(events: list[ServerSentEvent], name: str = "notes") -> list[int]:
    return [json.loads(e.data)["n"] for e in events if e.event == name]


def topic_position(cursor: str, name: str = "notes") -> str:
    return positions(cursor)[name]


# --- publishing and fan-out ----------------------------------------------------------------


@pytest.mark.anyio
async def test_two_subscribers_get_the_same_events_in_publish_order(hub_server: HubServer) -> None:
    live = {"streams": "notes,echo", "echo.count": 1, "echo.interval": 0}
    ready = [asyncio.Event(), asyncio.Event()]
    tasks = [asyncio.create_task(subscribe(hub_server, live, 120, ready=r)) for r in ready]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 10)
    async with httpx.AsyncClient(base_url=hub_server.url, timeout=TIMEOUT) as client:
        for start in range(0, 120, 20):  # singles and batches, in order
            single = await client.post("/streams/notes/events", json=note(start))
            batch = await client.post(
                "/streams/notes/events", json=[note(n) for n in range(start + 1, start + 20)]
            )
            assert single.status_code == batch.status_code == 201
    first, second = await asyncio.wait_for(asyncio.gather(*tasks), 20)
    assert numbers(first) == numbers(second) == list(range(120))
    assert [e.id for e in first] == [e.id for e in second]
    assert [e.data for e in first] == [e.data for e in second]


def test_publish_answers_positions_and_ids(hub_server: HubServer) -> None:
    response = publish(
        hub_server, "chat", [{"user": "ana", "text": "a"}, {"user": "bo", "text": "b"}]
    )
    assert response.status_code == 201
    body = response.json()
    first, second = body["positions"]
    epoch, seq = first.split(".")
    assert second == f"{epoch}.{int(seq) + 1}"
    assert body["ids"] == [f"chat:{first}", f"chat:{second}"]
    replay = read_events(
        hub_server, {"streams": "chat", "count": 1}, headers={"Last-Event-ID": body["ids"][0]}
    )
    assert replay[0].id == body["ids"][1]
    message = json.loads(replay[0].data)
    assert (message["user"], message["text"]) == ("bo", "b")
    received = datetime.fromisoformat(message["received_at"])
    assert abs((datetime.now(UTC) - received).total_seconds()) < 60


@pytest.mark.parametrize(
    ("name", "body", "status", "code", "mentions"),
    [
        ("nope", {"user": "a", "text": "b"}, 404, "unknown_stream", "chat"),
        ("echo", {"message": "x"}, 405, "not_publishable", "generated"),
        ("ticks", {"n": 1}, 405, "not_publishable", "producer"),
        ("chat", {"user": "a"}, 422, "invalid_events", "text"),
        ("chat", {"user": "a", "text": "b", "extra": 1}, 422, "invalid_events", "extra"),
        (
            "chat",
            {"user": "a", "text": "b", "received_at": "2020-01-01T00:00:00Z"},
            422,
            "invalid_events",
            "set by the hub",
        ),
        ("chat", [{"user": "a", "text": "ok"}, {"user": "a"}], 422, "invalid_events", "[1]"),
        ("chat", [], 422, "invalid_events", "no events"),
        ("chat", "hello", 422, "invalid_events", "JSON object"),
    ],
)
def test_publish_refuses_what_does_not_fit(
    hub_server: HubServer, name: str, body: Any, status: int, code: str, mentions: str
) -> None:
    before = publish(hub_server, "notes", note(-1)).json()["positions"][0]
    response = publish(hub_server, name, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and mentions in json.dumps(error), error
    if status == 405:
        assert response.headers["allow"] == ""
    # nothing of a refused batch was published, and the hub goes on
    after = publish(hub_server, "notes", note(-1)).json()["positions"][0]
    assert int(after.split(".")[1]) == int(before.split(".")[1]) + 1


def test_publish_refuses_malformed_and_oversized_bodies(hub_server: HubServer) -> None:
    url = f"{hub_server.url}/streams/chat/events"
    json_type = {"content-type": "application/json"}
    malformed = httpx.post(url, content=b'{"user": "a", ', headers=json_type, timeout=TIMEOUT)
    assert malformed.status_code == 400 and malformed.json()["error"]["code"] == "malformed_json"
    big = json.dumps({"user": "a", "text": "x" * (1024 * 1024)}).encode()
    declared = httpx.post(url, content=big, headers=json_type, timeout=TIMEOUT)
    assert declared.status_code == 413
    assert "1048576 bytes" in declared.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    streamed = httpx.post(url, content=chunks(), headers=json_type, timeout=TIMEOUT)
    assert streamed.status_code == 413


# --- history and resume --------------------------------------------------------------------


@pytest.mark.anyio
async def test_resume_after_drops_gets_exactly_the_missed_events_while_publishes_race(
    hub_server: HubServer,
) -> None:
    total = 400
    marker = publish(hub_server, "notes", note(-1)).json()["ids"][0]

    async def publisher() -> None:
        async with httpx.AsyncClient(base_url=hub_server.url, timeout=TIMEOUT) as client:
            for n in range(total):
                response = await client.post("/streams/notes/events", json=note(n))
                assert response.status_code == 201

    publishing = asyncio.create_task(publisher())
    received: list[int] = []
    cursor = marker
    reconnects = 0
    while len(received) < total:
        # read a few, drop the connection, come back with the last id: over and over
        batch = await subscribe(
            hub_server,
            {"streams": "notes"},
            min(17, total - len(received)),
            headers={"Last-Event-ID": cursor},
        )
        received += numbers(batch)
        cursor = batch[-1].id
        reconnects += 1
    await publishing
    assert received == list(range(total))  # none lost, none twice, in order
    assert reconnects >= total // 17


def test_gap_when_history_no_longer_reaches_back(hub_server: HubServer) -> None:
    start = publish(hub_server, "short", note(0)).json()["ids"][0]
    published = publish(hub_server, "short", [note(n) for n in range(1, 9)]).json()["positions"]
    events = read_events(
        hub_server, {"streams": "short", "count": 5}, headers={"Last-Event-ID": start}
    )
    assert events[0].event == "hub.gap"
    assert json.loads(events[0].data) == {
        "stream": "short",
        "requested": topic_position(start, "short"),
        "resumed_from": published[3],
    }
    # A control event moves no position: the last id is still the starting cursor's.
    assert events[0].id == start
    assert numbers(events, "short") == [4, 5, 6, 7, 8]  # the five retained, in order


def test_a_cursor_from_a_restarted_hub_gets_a_gap(tmp_path: Path) -> None:
    with HubServer() as first:
        old = publish(first, "chat", [{"user": "a", "text": "before"}] * 2).json()["ids"][-1]
    with HubServer() as second:
        new = publish(second, "chat", [{"user": "b", "text": f"after {n}"} for n in range(3)])
        events = read_events(
            second, {"streams": "chat", "count": 3}, headers={"Last-Event-ID": old}
        )
    gap = json.loads(events[0].data)
    assert events[0].event == "hub.gap"
    assert gap == {
        "stream": "chat",
        "requested": old.split(":", 1)[1],
        "resumed_from": new.json()["positions"][0],
    }
    assert [json.loads(e.data)["text"] for e in events[1:]] == ["after 0", "after 1", "after 2"]


def test_a_mixed_topic_and_generated_selection_resumes_both(hub_server: HubServer) -> None:
    params = {"streams": "notes,counter", "counter.interval": 0.05}
    first = read_events(hub_server, params, 3)  # counter only: notes is quiet
    cursor = first[-1].id
    assert numbers(first, "counter") == [0, 1, 2]
    publish(hub_server, "notes", [note(n, "missed") for n in range(3)])
    resumed = read_events(hub_server, params, 6, headers={"Last-Event-ID": cursor})
    assert [json.loads(e.data)["text"] for e in resumed if e.event == "notes"] == ["missed"] * 3
    assert numbers(resumed, "counter")[0] == 3  # counter goes on where it stopped
    assert topic_position(resumed[-1].id) != topic_position(cursor)


def test_without_a_cursor_a_topic_starts_live_and_its_id_is_already_exact(
    hub_server: HubServer,
) -> None:
    publish(hub_server, "notes", note(1, "old"))
    events = read_events(hub_server, {"streams": "notes,echo", "echo.count": 1}, 1)
    assert events[0].event == "echo"  # nothing old was replayed
    publish(hub_server, "notes", note(2, "new"))
    resumed = read_events(
        hub_server, {"streams": "notes", "count": 1}, headers={"Last-Event-ID": events[0].id}
    )
    assert json.loads(resumed[0].data)["text"] == "new"


@pytest.mark.anyio
async def test_count_waits_for_the_next_events_of_a_topic(hub_server: HubServer) -> None:
    ready = asyncio.Event()
    params = {"streams": "notes,echo", "count": 1, "echo.interval": 0}
    task = asyncio.create_task(subscribe(hub_server, params, 1, ready=ready))
    await asyncio.wait_for(ready.wait(), 10)
    publish(hub_server, "notes", [note(7), note(8)])
    assert numbers(await asyncio.wait_for(task, 10)) == [7]


# --- slow consumers ------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.anyio
async def test_a_stalled_client_is_cut_off_and_the_others_keep_up() -> None:
    total, size, batch = 6000, 2000, 100
    async with _server(PLUGINS, "--send-timeout", "2") as server:  # the default buffer, 1000
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", server.port))
        stalled.sendall(b"GET /events?streams=notes HTTP/1.1\r\nHost: hub\r\n\r\n")
        stalled.settimeout(10)
        assert b"200 OK" in stalled.recv(64)  # subscribed; from now on it reads nothing
        rss_before = rss_bytes(server.pid)

        delivered: list[int] = []
        latencies: list[float] = []
        ready, progress = asyncio.Event(), asyncio.Event()

        async def keep_up() -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
                params = {"streams": "notes,echo", "echo.count": 1, "echo.interval": 0}
                async with aconnect_sse(client, "GET", "/events", params=params) as source:
                    async for sse in source.aiter_sse():
                        if not sse.data:  # the retry hint
                            continue
                        if sse.event == "echo":
                            ready.set()
                        elif sse.event == "notes":
                            data = json.loads(sse.data)
                            sent = datetime.fromisoformat(data["received_at"])
                            latencies.append((datetime.now(UTC) - sent).total_seconds())
                            delivered.append(data["n"])
                            progress.set()
                            if len(delivered) == total:
                                return
                        else:
                            raise AssertionError(f"unexpected {sse.event}: {sse.data}")

        reader = asyncio.create_task(keep_up())
        await asyncio.wait_for(ready.wait(), 10)
        most_buffered = 0
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
            for start in range(0, total, batch):
                # a publisher that outpaces no reader that keeps up: at most 5 batches ahead
                while start - len(delivered) > 5 * batch:
                    progress.clear()
                    await asyncio.wait_for(progress.wait(), 15)
                notes = [note(n, "x" * size) for n in range(start, start + batch)]
                assert (await client.post("/streams/notes/events", json=notes)).status_code == 201
                most_buffered = max(
                    most_buffered, (await client.get("/health")).json()["max_buffered"]
                )
        await asyncio.wait_for(reader, 60)
        assert delivered == list(range(total))  # every event, in order, never cut
        # Never past the buffer, plus the publish being delivered and the one that arrives.
        assert most_buffered < 1000 + 2 * batch
        # the stalled client was cut off: the server closed its end
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        received = 0
        while chunk := await asyncio.to_thread(stalled.recv, 65536):
            received += len(chunk)
            assert loop.time() < deadline, "the stalled client was never cut off"
        stalled.close()
        assert received < total * size / 2  # it got far less than was published
        assert get(server, "/health").json()["subscriptions"] == 0
        assert rss_bytes(server.pid) - rss_before < 100 * 1024 * 1024
        latencies.sort()
        print(
            f"\nslow consumer: 1 stalled + 1 reading subscriber, {total} events of {size} B; "
            f"reader latency p50 {statistics.median(latencies) * 1000:.1f} ms, "
            f"p99 {latencies[int(len(latencies) * 0.99) - 1] * 1000:.1f} ms; "
            f"stalled client got {received} B before the cut"
        )


class _server:
    """An async context manager around HubServer (it starts and stops in a thread)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        plugins = [a for a in args if not a.startswith("-") and not a.isdigit()]
        flags = [a for a in args if a not in plugins]
        self.server = HubServer(*plugins, args=flags, env=env)

    async def __aenter__(self) -> HubServer:
        return await asyncio.to_thread(self.server.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.server.stop)


# --- fan-out figures -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_fan_out_delivers_every_event_to_every_subscriber_promptly(
    hub_server: HubServer,
) -> None:
    subscribers, total = 50, 200
    ready = [asyncio.Event() for _ in range(subscribers)]
    stamps: list[list[float]] = [[] for _ in range(subscribers)]

    async def timed(i: int) -> list[int]:
        got: list[int] = []
        async with httpx.AsyncClient(base_url=hub_server.url, timeout=TIMEOUT) as client:
            params = {"streams": "notes,echo", "echo.count": 1, "echo.interval": 0}
            async with aconnect_sse(client, "GET", "/events", params=params) as source:
                async for sse in source.aiter_sse():
                    if sse.event == "echo":
                        ready[i].set()
                    elif sse.event == "notes":
                        sent = datetime.fromisoformat(json.loads(sse.data)["received_at"])
                        stamps[i].append((datetime.now(UTC) - sent).total_seconds())
                        got.append(json.loads(sse.data)["n"])
                        if len(got) == total:
                            return got
        return got

    tasks = [asyncio.create_task(timed(i)) for i in range(subscribers)]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 20)
    async with httpx.AsyncClient(base_url=hub_server.url, timeout=TIMEOUT) as client:
        for n in range(total):
            assert (await client.post("/streams/notes/events", json=note(n))).status_code == 201
            await asyncio.sleep(0.005)  # a publisher's pace, ~150/s: not a synchronisation
    results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    assert all(result == list(range(total)) for result in results)
    latencies = sorted(latency for per in stamps for latency in per)
    p50 = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"\nfan-out: {subscribers} subscribers x {total} events = {len(latencies)} deliveries; "
        f"latency p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {latencies[-1] * 1000:.1f} ms"
    )
    assert p99 < 2.0  # generous: two busy cores run the hub and all 50 clients


# --- shared producers ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_shared_producer_runs_once_for_many_and_stops_after_the_last(
    reports: Reports,
) -> None:
    env = {"HUB_TEST_REPORT_PORT": str(reports.port)}
    async with _server(PLUGINS, env=env) as server:
        assert await asyncio.to_thread(reports.next) == "open clock"  # eager: at start-up
        params = {"streams": "ticks"}
        seen = await asyncio.gather(*(subscribe(server, params, 8, name="ticks") for _ in range(4)))
        assert await asyncio.to_thread(reports.next) == "open ticks"  # once, for all four
        by_position: dict[str, int] = {}
        for events in seen:
            for event in events:
                n = json.loads(event.data)["n"]
                assert by_position.setdefault(event.id, n) == n  # one sequence, shared
        ordered = [by_position[p] for p in sorted(by_position, key=lambda p: int(p.split(".")[1]))]
        assert ordered == sorted(set(ordered))  # one producer: n rises with the position
        assert await asyncio.to_thread(reports.next) == "close ticks"  # the last one left
        health = get(server, "/health").json()
        assert health["producers"] == ["clock"] and health["subscriptions"] == 0
        again = await subscribe(server, params, 1, name="ticks")
        assert await asyncio.to_thread(reports.next) == "open ticks"  # back with a subscriber
        assert json.loads(again[0].data)["n"] == 0
        assert await asyncio.to_thread(reports.next) == "close ticks"
