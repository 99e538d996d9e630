"""The scenarios of issue 4, each run against the hub and its anchors.

Every measurement gets a fresh server process, started and stopped here, so that runs do not
inherit each other's state; the runs of the servers are interleaved (hub, anchor, hub, ...)
so that drift on the machine spreads over all of them.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from bench.client import Job, LoadClient, Report, first_frames, publish
from bench.report import HUB, HUB_AUTH, Results, Scenario
from bench.servers import (
    AUTH_KEY,
    Server,
    forget_run,
    hub_command,
    nchan_missing,
    redis_missing,
    redis_url_for_run,
    start_bare,
    start_hub,
    start_hub_auth,
    start_nchan,
    start_sse,
    startup_time,
)

BARE = "bare ASGI"
SSE = "sse-starlette"
NCHAN = "nchan"
STARTERS: dict[str, Callable[[], Awaitable[Server]]] = {
    HUB: start_hub,
    HUB_AUTH: start_hub_auth,
    BARE: start_bare,
    SSE: start_sse,
    NCHAN: start_nchan,
}
# The eight generated streams of bench/streams_bench.py (not imported: the kit runs the hub
# only as a server, never in its own process).
MERGE_STREAMS = tuple(f"s{i}" for i in range(1, 9))
MEASUREMENT_LIMIT = 600.0
# Firehose and merge: the client pauses 1 ms after each read, so it reads many frames at a
# time and its cost per read stays out of the figure, yet far too briefly for the socket to
# fill and slow the server down (which would batch its writes for it).
READ_PAUSE = 0.001
CPUS = os.cpu_count() or 1  # seconds: no single measurement runs longer


@dataclass(frozen=True)
class Plan:
    """How much of everything: the full run, or the quick one."""

    quick: bool
    runs: int
    processes: int  # client processes for the many-connection scenarios
    stream_seconds: float  # firehose and merge: the counting window
    warmup_seconds: float  # firehose and merge: before counting starts
    fanout_sizes: tuple[int, ...]
    cluster_sizes: tuple[int, ...]  # fan-out over hub processes sharing Redis
    redis: str  # the Redis the cluster scenario uses (its keys under a prefix of its own)
    publish_rate: float  # publishes per second
    publish_seconds: float
    settle_seconds: float  # after every subscriber is connected, before publishing
    drain_seconds: float  # after the last publish, at most this long for the deliveries
    idle_subscribers: int
    first_frame_requests: int
    rooms: int = 1_000  # keyed topics in the rooms scenario
    room_subscribers: int = 5  # subscribers of each
    rooms_rate: float = 1_000.0  # publishes/s over all rooms: each room once a second
    rooms_seconds: float = 10.0
    idle_topics: int = 2_000  # keyed topics of 100 events each, for their memory

    @property
    def anchors(self) -> bool:
        return not self.quick

    def describe(self) -> list[str]:
        sizes = ", ".join(f"{n:,}" for n in self.fanout_sizes)
        return [
            f"{'quick mode: hub only' if self.quick else 'full run: hub and anchors'} "
            f"(the hub also as `{HUB_AUTH}`: authorization on, a token per subscriber), "
            f"{self.runs} run(s) per figure, a fresh server process for each",
            f"firehose and merge: {self.warmup_seconds} s warm-up, then {self.stream_seconds} s "
            "counted",
            f"fan-out: {sizes} subscribers; {self.publish_rate:g} publishes/s for "
            f"{self.publish_seconds:g} s after a {self.settle_seconds:g} s settle; deliveries "
            f"counted until {self.drain_seconds:g} s after the last publish",
            f"cluster: {', '.join(f'{n:,}' for n in self.cluster_sizes)} subscribers, as in "
            f"fan-out, on Redis at {self.redis}",
            f"rooms: {self.rooms:,} keyed topics x {self.room_subscribers} subscribers, "
            f"{self.rooms_rate:,.0f} publishes/s for {self.rooms_seconds:g} s; memory of "
            f"{self.idle_topics:,} idle keyed topics of 100 events",
            f"idle: {self.idle_subscribers:,} subscribers; first frame: "
            f"{self.first_frame_requests} sequential requests",
            f"load client: raw asyncio protocols, {self.processes} processes for many "
            "connections (1 for one connection), uvloop when importable",
        ]


def full_plan(runs: int, processes: int, redis: str) -> Plan:
    return Plan(
        quick=False,
        runs=runs,
        processes=processes,
        stream_seconds=5.0,
        warmup_seconds=0.5,
        fanout_sizes=(100, 1_000, 5_000, 10_000),
        cluster_sizes=(1_000, 5_000),
        redis=redis,
        publish_rate=10.0,
        publish_seconds=10.0,
        settle_seconds=1.0,
        drain_seconds=10.0,
        idle_subscribers=5_000,
        first_frame_requests=200,
    )


def quick_plan(runs: int, processes: int, redis: str) -> Plan:
    return Plan(
        quick=True,
        runs=runs,
        processes=processes,
        stream_seconds=1.0,
        warmup_seconds=0.2,
        fanout_sizes=(100,),
        cluster_sizes=(100,),
        redis=redis,
        publish_rate=10.0,
        publish_seconds=1.0,
        settle_seconds=0.5,
        drain_seconds=3.0,
        idle_subscribers=200,
        first_frame_requests=50,
        rooms=100,
        room_subscribers=2,
        rooms_rate=100.0,
        rooms_seconds=1.0,
        idle_topics=200,
    )


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


Measure = Callable[[str, Any], Awaitable[str]]
Opener = Callable[[str], AbstractAsyncContextManager[Any]]


@asynccontextmanager
async def _fresh(name: str) -> AsyncIterator[Server]:
    """A fresh process of the server `name`, stopped afterwards."""
    async with await STARTERS[name]() as server:
        yield server


async def each_run(
    plan: Plan,
    results: Results,
    scenario: str,
    servers: list[str],
    measure: Measure,
    opener: Opener = _fresh,
) -> None:
    """`measure(name, opened)` for every run and every server name, on what `opener(name)`
    opens afresh each time (by default: a fresh process of that server)."""
    for run in range(plan.runs):
        for name in servers:
            label = f"[{scenario}] {name} run {run + 1}/{plan.runs}"
            try:
                async with opener(name) as opened:
                    summary = await asyncio.wait_for(measure(name, opened), MEASUREMENT_LIMIT)
            except Exception as exc:
                results.error(scenario, f"{name}, run {run + 1}: {type(exc).__name__}: {exc}")
                log(f"{label}: FAILED: {exc}")
                continue
            log(f"{label}: {summary}")


def _servers(plan: Plan, results: Results, scenario: str, anchors: tuple[str, ...]) -> list[str]:
    """The hub, the hub with authorization on (quick mode too: what auth costs is a hub
    figure), and the anchors of the scenario (not in quick mode)."""
    servers = [HUB, HUB_AUTH]
    for anchor in anchors if plan.anchors else ():
        missing = nchan_missing() if anchor == NCHAN else None
        if missing:
            results.note(scenario, f"nchan skipped: {missing}")
        else:
            servers.append(anchor)
    return servers


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU ticks of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as stat:
        ticks = [float(tick) for tick in stat.readline().split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


def busy_cores(start: tuple[float, float], cpus: int) -> float:
    """Cores the whole machine kept busy since `start` (a `machine_busy()` reading)."""
    busy, total = machine_busy()
    return (busy - start[0]) / max(1.0, total - start[1]) * cpus


def _client_note(
    results: Results, scenario: str, name: str, report: Report, case: str = ""
) -> None:
    where = f"{case}, {name}" if case else name
    if report.elapsed > 0:
        results.observe(
            scenario,
            "load client CPU during the window (cores, summed over its processes; "
            "min - max over runs)",
            where,
            report.cpu / report.elapsed,
        )
    if report.dropped:
        results.note(scenario, f"{name}: the server closed {report.dropped} connection(s)")


def _key(name: str) -> str | None:
    """The key of the tokens that server `name` verifies, if it verifies any."""
    return AUTH_KEY if name == HUB_AUTH else None


async def _count_for(
    plan: Plan, port: int, path: str, *, by_name: bool = False, auth_key: str | None = None
) -> Report:
    """One connection: events received in `plan.stream_seconds`, after a warm-up."""
    job = Job(
        port, path, 1, by_name=by_name, pause=READ_PAUSE, connect_timeout=15, auth_key=auth_key
    )
    async with LoadClient(job, 1) as client:
        if client.connected != 1:
            raise RuntimeError(f"could not subscribe: {client.errors}")
        await asyncio.sleep(plan.warmup_seconds)
        await client.reset()
        await asyncio.sleep(plan.stream_seconds)
        return await client.stop()


FIREHOSE = Scenario(
    "firehose",
    "one client, as fast as it goes",
    "One connection to `GET /events?streams=echo,reverse_echo&interval=0` (the anchors send "
    "the same frames: bare ASGI one pre-encoded frame per `send`, sse-starlette a dict event "
    "per yield); figure: events received per second over the window. The client reads at "
    "most once a millisecond, so that it takes many frames per read.",
    (BARE, SSE),
)


async def firehose(plan: Plan, results: Results) -> None:
    paths = {
        HUB: "/events?streams=echo,reverse_echo&interval=0",
        BARE: "/events?streams=echo,reverse_echo",
        SSE: "/events?interval=0",
    }
    paths[HUB_AUTH] = paths[HUB]

    async def measure(name: str, server: Server) -> str:
        report = await _count_for(plan, server.port, paths[name], auth_key=_key(name))
        rate = report.events / report.elapsed
        results.add("firehose", "1 client", "events/s", name, rate)
        _client_note(results, "firehose", name, report)
        return f"{rate:,.0f} events/s"

    servers = _servers(plan, results, "firehose", FIREHOSE.anchors)
    await each_run(plan, results, "firehose", servers, measure)


MERGE = Scenario(
    "merge",
    "eight streams merged for one client",
    "One connection to `GET /events?streams=s1,...,s8&interval=0` (eight generated streams "
    "of `bench/streams_bench.py`, each yielding `{n, sent_at}` without pause); figures: events "
    "per second, and fairness = the smallest stream's share / the largest's (1.0 = even). "
    "Anchor: the bare ASGI app cycling through eight pre-encoded frames. The client reads at "
    "most once a millisecond, as in the firehose.",
    (BARE,),
)


async def merge(plan: Plan, results: Results) -> None:
    selection = ",".join(MERGE_STREAMS)
    paths = {HUB: f"/events?streams={selection}&interval=0", BARE: f"/events?streams={selection}"}
    paths[HUB_AUTH] = paths[HUB]

    async def measure(name: str, server: Server) -> str:
        report = await _count_for(plan, server.port, paths[name], by_name=True, auth_key=_key(name))
        rate = report.events / report.elapsed
        shares = [report.names.get(stream, 0) for stream in MERGE_STREAMS]
        fairness = min(shares) / max(shares) if max(shares) else 0.0
        case = f"{len(MERGE_STREAMS)} streams"
        results.add("merge", case, "events/s", name, rate)
        results.add("merge", case, "fairness (min/max share)", name, fairness)
        _client_note(results, "merge", name, report)
        return f"{rate:,.0f} events/s, fairness {fairness:.3f}"

    await each_run(plan, results, "merge", _servers(plan, results, "merge", MERGE.anchors), measure)


FANOUT = Scenario(
    "fanout",
    "one topic, many subscribers, 10 publishes/s",
    "N subscribers of one topic (hub: `GET /events?streams=bench`; nchan: its EventSource "
    "location) connect and get their response head; after a settle, a publisher POSTs "
    "`{seq, sent_at}` at a fixed rate, each at its time on an idle keep-alive connection "
    "(up to 8, so that a slow response does not delay the next publish; `sent_at` = wall "
    "clock just before the request). Figures: delivery latency (client receive time - `sent_at`) "
    "over every delivery, the fraction delivered = deliveries / (N x publishes), and the "
    "server's CPU (utime + stime from `/proc`) over the publishing window, in cores.",
    (NCHAN,),
)


def _body(seq: int, sent_at: float) -> bytes:
    return json.dumps({"seq": seq, "sent_at": sent_at}, separators=(",", ":")).encode()


async def fanout(plan: Plan, results: Results) -> None:
    subscribe = {HUB: "/events?streams=bench", HUB_AUTH: "/events?streams=bench", NCHAN: "/sub"}
    publish_to = {HUB: "/streams/bench/events", NCHAN: "/pub"}
    publish_to[HUB_AUTH] = publish_to[HUB]

    for size in plan.fanout_sizes:
        case = f"{size:,} subscribers"

        async def measure(name: str, server: Server, size: int = size, case: str = case) -> str:
            paths = (subscribe[name], publish_to[name])
            return await _fan_out(plan, results, "fanout", name, [server], paths, size, case)

        await each_run(
            plan, results, "fanout", _servers(plan, results, "fanout", FANOUT.anchors), measure
        )


async def _fan_out(
    plan: Plan,
    results: Results,
    scenario: str,
    name: str,
    servers: Sequence[Server],
    paths: tuple[str, str],
    size: int,
    case: str,
    rooms: int = 0,
) -> str:
    """One fan-out measurement: `size` subscribers spread evenly over `servers`, the
    publisher on the first; figures recorded under `scenario`, `case` and `name`. With
    `rooms`, the paths hold `{room}`: subscribers and publishes are spread over that many
    topics, each publish going to the subscribers of its room alone."""
    subscribe, publish_to = paths
    rate = plan.rooms_rate if rooms else plan.publish_rate
    publishes = round(rate * (plan.rooms_seconds if rooms else plan.publish_seconds))
    audience = size // rooms if rooms else size  # subscribers of each publish
    shares = [size // len(servers) + (i < size % len(servers)) for i in range(len(servers))]
    offsets = [sum(shares[:i]) for i in range(len(servers))]
    processes = max(1, plan.processes // len(servers))
    connecting = time.perf_counter()
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                LoadClient(
                    Job(
                        server.port,
                        subscribe,
                        share,
                        latency=True,
                        connect_timeout=240,
                        auth_key=_key(name),
                        rooms=rooms,
                        offset=offset,
                    ),
                    processes,
                )
            )
            for server, share, offset in zip(servers, shares, offsets, strict=True)
        ]
        connecting = time.perf_counter() - connecting
        connected = sum(client.connected for client in clients)
        if connected < size:
            errors = [error for client in clients for error in client.errors][:5]
            results.note(scenario, f"{name}, {case}: only {connected:,} connected ({errors})")
        await asyncio.sleep(plan.settle_seconds)
        for client in clients:
            await client.reset()
        cpu, started = sum(s.cpu_seconds() for s in servers), time.perf_counter()
        machine = machine_busy()
        sent = await publish(
            servers[0].port,
            publish_to,
            rate,
            publishes,
            _body,
            connections=32 if rooms else 8,
            auth_key=_key(name),
            rooms=rooms,
        )
        window = time.perf_counter() - started
        cpu = sum(s.cpu_seconds() for s in servers) - cpu
        results.observe(
            scenario,
            f"whole machine CPU busy while publishing (cores of {CPUS}: servers, "
            "client, publisher, kernel and anything else)",
            f"{case}, {name}",
            busy_cores(machine, CPUS),
        )
        expected = audience * sent.ok
        deadline = time.monotonic() + plan.drain_seconds
        while time.monotonic() < deadline:
            deliveries = sum([(await client.poll())[1] for client in clients])
            if deliveries >= expected:
                break
            await asyncio.sleep(0.1)
        report = Report()
        for client in clients:
            report.merge(await client.stop())
    if sent.failed:
        results.note(scenario, f"{name}, {case}: {sent.failed} publishes failed {sent.errors}")
    latencies = sorted(report.latencies)
    delivered = report.deliveries / (audience * publishes)
    if latencies:
        for label, fraction in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
            value = percentile(latencies, fraction) * 1000
            results.add(scenario, case, f"{label} latency (ms)", name, value)
    results.add(scenario, case, "delivered (fraction)", name, delivered)
    results.add(scenario, case, "server CPU (cores)", name, cpu / window)
    _client_note(results, scenario, name, report, case)
    return (
        f"{case}: p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms, delivered {delivered:.4f}, "
        f"server CPU {cpu / window:.2f}; connecting took {connecting:.1f} s, "
        f"slowest publish {sent.slowest * 1000:.0f} ms"
    )


REDIS_ONE = "hub, redis"
REDIS_TWO = "2 hubs, redis"
CLUSTER = Scenario(
    "cluster",
    "fan-out across hub processes sharing Redis",
    "The fan-out scenario on the `redis://` broker: N subscribers of the `bench` topic spread "
    "evenly over the hub processes (each its own `hub serve --broker redis://...`, keys under "
    "a prefix of the run's own, deleted after it), the publisher on the first. Servers: "
    f"`{HUB}` = one process on the embedded memory broker (as in fan-out), `{REDIS_ONE}` = one "
    f"process on Redis, `{REDIS_TWO}` = two processes on Redis, the load client's processes "
    "split between them. Figures as in fan-out; server CPU is summed over the hub processes "
    "(Redis's own is not counted). On one 2-core machine the hubs, Redis and the load client "
    "share the cores: a second process adds no core of its own here, unlike on two machines.",
    (REDIS_ONE, REDIS_TWO),
)


# The hub set-ups of the cluster and rooms scenarios: hub processes, and whether on Redis.
SETUPS = {HUB: (1, False), REDIS_ONE: (1, True), REDIS_TWO: (2, True)}


@asynccontextmanager
async def _hubs(plan: Plan, name: str) -> AsyncIterator[list[Server]]:
    """Fresh hub processes of set-up `name`; on Redis, under a key prefix of their own,
    deleted afterwards."""
    count, on_redis = SETUPS[name]
    broker = redis_url_for_run(plan.redis) if on_redis else None
    try:
        async with AsyncExitStack() as stack:
            yield [await stack.enter_async_context(await start_hub(broker)) for _ in range(count)]
    finally:
        if broker:
            await forget_run(broker)


async def cluster(plan: Plan, results: Results) -> None:
    missing = await redis_missing(plan.redis)
    if missing:
        results.note("cluster", f"skipped: {missing}")
        log(f"[cluster] skipped: {missing}")
        return
    paths = ("/events?streams=bench", "/streams/bench/events")
    names = [REDIS_TWO] if plan.quick else list(SETUPS)

    def hubs(name: str) -> AbstractAsyncContextManager[list[Server]]:
        return _hubs(plan, name)

    for size in plan.cluster_sizes:
        case = f"{size:,} subscribers"

        async def measure(
            name: str, servers: list[Server], size: int = size, case: str = case
        ) -> str:
            return await _fan_out(plan, results, "cluster", name, servers, paths, size, case)

        await each_run(plan, results, "cluster", names, measure, hubs)


ROOMS = Scenario(
    "rooms",
    "many keyed topics (chat rooms), a few subscribers each",
    "K keyed topics (hub: `rooms/r0` .. `rooms/r{K-1}` of the keyed family `rooms`; nchan: a "
    "channel per room, its id from the path), S subscribers of each, each subscribing to its "
    "room alone; after a settle, the publisher POSTs `{seq, sent_at}` to room `seq % K`, at a "
    "fixed rate over all rooms (every room once a second at K publishes/s), on up to 32 "
    "keep-alive connections. Figures as in fan-out, the fraction delivered = deliveries / "
    "(S x publishes). Servers: `hub` = one process on the memory broker, "
    f"`{REDIS_ONE}` and `{REDIS_TWO}` as in cluster (subscribers split between the two, the "
    "publisher on the first), nchan. Then the memory of keyed topics: N idle keys of 100 "
    "events each (one POST of 100 `{seq, sent_at}` per key) on a fresh hub on the memory "
    "broker; figure: (RSS after - RSS before) / N, read 0.5 s after the last publish.",
    (NCHAN,),
)


async def rooms(plan: Plan, results: Results) -> None:
    subscribe = {HUB: "/events?streams=rooms/r{room}", NCHAN: "/rooms/sub/r{room}"}
    publish_to = {HUB: "/streams/rooms/r{room}/events", NCHAN: "/rooms/pub/r{room}"}
    for name in (REDIS_ONE, REDIS_TWO):
        subscribe[name], publish_to[name] = subscribe[HUB], publish_to[HUB]
    names = [HUB]
    missing = await redis_missing(plan.redis)
    if missing:
        results.note("rooms", f"Redis skipped: {missing}")
    else:
        names += [REDIS_TWO] if plan.quick else [REDIS_ONE, REDIS_TWO]
    names += [n for n in _servers(plan, results, "rooms", ROOMS.anchors) if n == NCHAN]

    @asynccontextmanager
    async def servers(name: str) -> AsyncIterator[list[Server]]:
        if name == NCHAN:
            async with await start_nchan() as nchan:
                yield [nchan]
        else:
            async with _hubs(plan, name) as hubs:
                yield hubs

    size = plan.rooms * plan.room_subscribers
    case = f"{plan.rooms:,} rooms x {plan.room_subscribers} subscribers"

    async def measure(name: str, opened: list[Server]) -> str:
        paths = (subscribe[name], publish_to[name])
        return await _fan_out(plan, results, "rooms", name, opened, paths, size, case, plan.rooms)

    await each_run(plan, results, "rooms", names, measure, servers)

    async def topic_memory(name: str, server: Server) -> str:
        count = plan.idle_topics
        path = "/streams/rooms/m{room}/events"
        sent = await publish(
            server.port, "/streams/rooms/warm{room}/events", 1000, 10, _hundred, rooms=10
        )
        await asyncio.sleep(0.5)
        before = server.rss_bytes()
        sent = await publish(server.port, path, 1000, count, _hundred, connections=16, rooms=count)
        if sent.failed:
            raise RuntimeError(f"{sent.failed} publishes failed: {sent.errors}")
        await asyncio.sleep(0.5)
        per_topic = (server.rss_bytes() - before) / count / 1024
        results.add(
            "rooms",
            f"{count:,} idle keyed topics",
            "RSS per topic of 100 events (KiB)",
            name,
            per_topic,
        )
        return f"{per_topic:.1f} KiB per idle keyed topic of 100 events"

    await each_run(plan, results, "rooms", [HUB], topic_memory)


def _hundred(seq: int, sent_at: float) -> bytes:
    """A batch of 100 small events, as in a room's history."""
    return json.dumps([{"seq": seq, "sent_at": sent_at}] * 100, separators=(",", ":")).encode()


IDLE = Scenario(
    "idle",
    "many subscribers, nothing to send",
    "N subscribers of a stream that never sends (hub: the `quiet` topic; nchan: a channel "
    "nobody publishes to; sse-starlette: a response that awaits forever). Figure: "
    "(server RSS with all connected - RSS before) / N, RSS = VmRSS from `/proc` (summed over "
    "nginx's processes), read 1 s after the last connected; KiB = 1024 bytes. Before the "
    "baseline, 10 connections open and close once so that lazy start-up costs stay out.",
    (NCHAN, SSE),
)


async def idle(plan: Plan, results: Results) -> None:
    paths = {HUB: "/events?streams=quiet", NCHAN: "/idle", SSE: "/idle"}
    paths[HUB_AUTH] = paths[HUB]
    size = plan.idle_subscribers
    case = f"{size:,} subscribers"

    async def measure(name: str, server: Server) -> str:
        warming = Job(server.port, paths[name], 10, connect_timeout=30, auth_key=_key(name))
        async with LoadClient(warming, 1) as warm:
            await warm.stop()
        await asyncio.sleep(0.5)
        before = server.rss_bytes()
        job = Job(server.port, paths[name], size, connect_timeout=240, auth_key=_key(name))
        async with LoadClient(job, plan.processes) as client:
            await asyncio.sleep(1.0)
            after = server.rss_bytes()
            connected = client.connected
            await client.stop()
        if connected < size:
            results.note("idle", f"{name}: only {connected:,} of {size:,} connected")
        if not connected:
            raise RuntimeError(f"no subscriber connected: {client.errors}")
        per_connection = (after - before) / connected / 1024
        results.add("idle", case, "RSS per connection (KiB)", name, per_connection)
        return f"{per_connection:.1f} KiB per connection ({connected:,} connected)"

    await each_run(plan, results, "idle", _servers(plan, results, "idle", IDLE.anchors), measure)


FIRST_FRAME = Scenario(
    "first-frame",
    "request to first event",
    "Sequential requests, each on a fresh connection: time from writing the request to "
    "receiving the first `data:` line (hub: `GET /events?streams=echo&count=1`; anchors: "
    "their one-event response). Five warm-up requests are not counted.",
    (BARE, SSE),
)


async def first_frame(plan: Plan, results: Results) -> None:
    paths = {
        HUB: "/events?streams=echo&count=1",
        BARE: "/events?streams=echo&count=1",
        SSE: "/events?count=1",
    }
    paths[HUB_AUTH] = paths[HUB]

    async def measure(name: str, server: Server) -> str:
        key, path = _key(name), paths[name]
        await first_frames(server.port, path, 5, auth_key=key)
        times = sorted(
            await first_frames(server.port, path, plan.first_frame_requests, auth_key=key)
        )
        p50, p99 = percentile(times, 0.5) * 1000, percentile(times, 0.99) * 1000
        results.add("first-frame", "echo, count=1", "p50 (ms)", name, p50)
        results.add("first-frame", "echo, count=1", "p99 (ms)", name, p99)
        return f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"

    servers = _servers(plan, results, "first-frame", FIRST_FRAME.anchors)
    await each_run(plan, results, "first-frame", servers, measure)


STARTUP = Scenario(
    "startup",
    "spawn to listening",
    "Time from spawning the server process to its `Uvicorn running on` line: "
    "`hub serve --port 0` (built-in streams and entry points, default logging) against the "
    "anchors' `python -m bench.anchors.NAME --port 0`.",
    (BARE, SSE),
)


async def startup(plan: Plan, results: Results) -> None:
    commands = {
        HUB: [*hub_command(), "serve", "--port", "0"],
        BARE: [sys.executable, "-m", "bench.anchors.bare", "--port", "0", "--log-level", "info"],
        SSE: [sys.executable, "-m", "bench.anchors.sse", "--port", "0", "--log-level", "info"],
    }
    servers = [HUB, *(STARTUP.anchors if plan.anchors else ())]
    for run in range(plan.runs):
        for name in servers:
            try:
                seconds = await startup_time(commands[name])
            except Exception as exc:
                results.error("startup", f"{name}, run {run + 1}: {exc}")
                continue
            results.add("startup", "spawn to listening", "start-up (s)", name, seconds)
            log(f"[startup] {name} run {run + 1}/{plan.runs}: {seconds:.3f} s")


ALL: dict[str, tuple[Scenario, Callable[[Plan, Results], Awaitable[None]]]] = {
    "firehose": (FIREHOSE, firehose),
    "merge": (MERGE, merge),
    "fanout": (FANOUT, fanout),
    "cluster": (CLUSTER, cluster),
    "rooms": (ROOMS, rooms),
    "idle": (IDLE, idle),
    "first-frame": (FIRST_FRAME, first_frame),
    "startup": (STARTUP, startup),
}
