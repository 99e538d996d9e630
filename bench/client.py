"""The load client: raw asyncio protocols over many connections, in several processes.

No HTTP library: each connection writes one `GET ... HTTP/1.1` request and reads the response
with an `asyncio.Protocol`. It parses only what the figures need: the status line, whether the
body is chunked (then it strips the chunk framing), complete frames (cut at the last blank
line), the number of `data:` lines in them (one per event), optionally each frame's `event:`
name, and optionally the sender's `"sent_at":` timestamp (found with `bytes.find`), from which
it records the delivery latency `receive time - sent_at` (wall clock; every process runs on
this machine).

`LoadClient` spreads the connections over worker processes (multiprocessing, spawn), each with
its own event loop (uvloop when importable), driven over a pipe: connect, then `reset`
(start counting), `poll` (counts so far), `stop` (close everything and report).

`first_frames` (request to first `data:` on fresh connections) and `publish` (POSTs at a fixed
rate over one keep-alive connection) run in the calling process.

Against a hub with authorization on (`auth_key` given), every connection sends a token of its
own (`Authorization: Bearer`, a `sub` of its own), minted before it connects: minting is the
back end's work, verifying the hub's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import multiprocessing
import os
import resource
import time
from array import array
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, TypeVar, cast

import jwt

T = TypeVar("T")

SENT_AT = b'"sent_at":'
SUBSCRIBERS = itertools.count()  # this process's subscriber tokens so far: each `sub` differs
MAX_TAIL = 1 << 20  # an incomplete frame longer than this means the stream is not SSE


def raise_nofile(want: int = 65536) -> int:
    """Raise this process's open-file limit towards `want` (up to the hard limit).

    Child processes inherit it, so calling this before starting servers raises theirs too.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on a fresh event loop: uvloop when it is importable."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(main)


def request(path: str, port: int, token: str | None = None) -> bytes:
    authorization = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{authorization}"
        "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
    ).encode()


def token(key: str | None, sub: str, *, publish: bool = False) -> str | None:
    """A token for a hub that verifies with `key` (None without authorization): every stream
    to read, and every topic to publish to if `publish`, for an hour."""
    if key is None:
        return None
    grants = {"subscribe": ["*"], "publish": ["*"] if publish else []}
    claims = {"sub": sub, "exp": int(time.time()) + 3600, "hub": grants}
    return jwt.encode(claims, key, "HS256")


def subscriber_request(path: str, port: int, key: str | None) -> bytes:
    """The request of one subscriber; given `key`, with a token of its own (a `sub` no other
    connection of the run has: this process's id and a counter)."""
    sub = f"user-{os.getpid()}-{next(SUBSCRIBERS)}"
    return request(path, port, token(key, sub))


class Tally:
    """What one worker's connections received since the last reset."""

    __slots__ = ("events", "deliveries", "latencies", "names", "dropped")

    def __init__(self) -> None:
        self.dropped = 0  # connections the server closed while we were reading (never reset)
        self.reset()

    def reset(self) -> None:
        self.events = 0  # `data:` lines: one per event
        self.deliveries = 0  # events carrying `"sent_at":`
        self.latencies = array("d")  # seconds, one per delivery
        self.names: dict[bytes, int] = {}  # events per `event:` name


class SSEProtocol(asyncio.Protocol):
    """One subscriber connection: the request, then counting frames as they arrive."""

    def __init__(
        self, request: bytes, tally: Tally, *, latency: bool, by_name: bool, pause: float = 0.0
    ) -> None:
        self.request = request
        self.tally = tally
        self.latency = latency
        self.by_name = by_name
        self.pause = pause  # seconds to stop reading after each read (0: read at once)
        self.paused = False
        self.transport: asyncio.Transport | None = None
        self.started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.head = b""
        self.in_body = False
        self.chunked = False
        self.chunk_left = 0  # payload bytes left in the current chunk
        self.skip = 0  # framing bytes to skip (the CRLF after a chunk)
        self.size_line = b""  # a chunk-size line split across reads
        self.tail = b""  # the start of a frame not complete yet
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.started.done():
            self.started.set_exception(exc or ConnectionError("closed before the response"))
        elif not self.closing:
            self.tally.dropped += 1

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 65536:
                    self._fail(ValueError("no end of the response head"))
                return
            head, data, self.head = self.head[:end], self.head[end + 4 :], b""
            self.in_body = True
            self.chunked = b"transfer-encoding: chunked" in head.lower()
            status = int(head[9:12]) if head.startswith(b"HTTP/1.") else 0
            self.started.set_result(status)
            if status != 200:
                self.close()
                return
            if not data:
                return
        if self.chunked:
            data = self._dechunk(data)
        if data:
            self._frames(data, now)
        if self.pause and not self.paused and self.transport is not None:
            # Let the next frames gather in the socket: one read then takes many of them.
            self.paused = True
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(self.pause, self._resume)

    def _resume(self) -> None:
        self.paused = False
        if not self.closing and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _fail(self, exc: Exception) -> None:
        if not self.started.done():
            self.started.set_exception(exc)
        self.close()

    def _dechunk(self, data: bytes) -> bytes:
        """The payload in `data`, without the chunked transfer framing."""
        if self.size_line:
            data, self.size_line = self.size_line + data, b""
        out = []
        pos, end = 0, len(data)
        while pos < end:
            if self.skip:  # the CRLF after a chunk's payload
                step = min(self.skip, end - pos)
                pos += step
                self.skip -= step
                continue
            if self.chunk_left:  # the rest of a chunk begun in an earlier read
                step = min(self.chunk_left, end - pos)
                out.append(data[pos : pos + step])
                pos += step
                self.chunk_left -= step
                if not self.chunk_left:
                    self.skip = 2
                continue
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                self.size_line = data[pos:]
                break
            size = int(data[pos:eol].partition(b";")[0], 16)
            if size == 0:  # the last chunk: the response is over
                break
            start = eol + 2
            stop = start + size
            if stop + 2 <= end:  # the whole chunk is here: the common case
                out.append(data[start:stop])
                pos = stop + 2
            elif stop <= end:
                out.append(data[start:stop])
                self.skip = stop + 2 - end
                pos = end
            else:
                out.append(data[start:end])
                self.chunk_left = stop - end
                pos = end
        return b"".join(out)

    def _frames(self, payload: bytes, now: float) -> None:
        buf = self.tail + payload if self.tail else payload
        lf = buf.rfind(b"\n\n")
        crlf = buf.rfind(b"\n\r\n")
        end = max(lf + 2 if lf >= 0 else 0, crlf + 3 if crlf >= 0 else 0)
        if end == 0:
            self.tail = buf
            if len(buf) > MAX_TAIL:
                self.close()
            return
        if end == len(buf):
            complete, self.tail = buf, b""
        else:
            complete, self.tail = buf[:end], buf[end:]
        tally = self.tally
        tally.events += complete.count(b"\ndata:") + complete.startswith(b"data:")
        if self.by_name:
            names = tally.names
            pos = complete.find(b"event: ")
            while pos >= 0:
                eol = complete.find(b"\n", pos)
                name = complete[pos + 7 : eol].rstrip(b"\r")
                names[name] = names.get(name, 0) + 1
                pos = complete.find(b"event: ", eol)
        if self.latency:
            latencies = tally.latencies
            pos = complete.find(SENT_AT)
            while pos >= 0:
                start = pos + len(SENT_AT)
                stop = complete.find(b",", start)
                brace = complete.find(b"}", start)
                if stop < 0 or 0 <= brace < stop:
                    stop = brace
                latencies.append(now - float(complete[start:stop]))
                tally.deliveries += 1
                pos = complete.find(SENT_AT, stop)


@dataclass(frozen=True)
class Job:
    """What a load client does: `connections` subscribers of `path` on 127.0.0.1:`port`."""

    port: int
    path: str
    connections: int
    latency: bool = False  # record delivery latency from `"sent_at":`
    by_name: bool = False  # count events per `event:` name
    # Seconds to stop reading after each read, so that reads come in batches: for throughput
    # figures, where the client's cost per read must not become the limit. 0 for latency.
    pause: float = 0.0
    concurrency: int = 256  # connections being opened at once, per process
    auth_key: str | None = None  # the hub's HS256 key: each connection sends its own token
    connect_timeout: float = 120.0  # for the whole connect phase
    lifetime: float = 900.0  # a worker ends by itself after this long, whatever happens
    # With `rooms`, `path` holds `{room}`: connection i (counted over every process, from
    # `offset`) subscribes to room (offset + i) % rooms, so that the rooms share them evenly.
    rooms: int = 0
    offset: int = 0

    def share(self, index: int, processes: int) -> Job:
        base, extra = divmod(self.connections, processes)
        count = base + (index < extra)
        offset = self.offset + index * base + min(index, extra)
        return dataclasses.replace(self, connections=count, offset=offset)

    def path_of(self, connection: int) -> str:
        """The path of this job's `connection`-th subscriber."""
        if not self.rooms:
            return self.path
        return self.path.format(room=(self.offset + connection) % self.rooms)


@dataclass
class Report:
    """What the client saw between `reset` and `stop`, over all its processes."""

    connected: int = 0
    failed: int = 0
    dropped: int = 0
    events: int = 0
    deliveries: int = 0
    latencies: array[float] = field(default_factory=lambda: array("d"))
    names: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0  # seconds from reset to stop (the longest of the processes)
    cpu: float = 0.0  # CPU seconds the client's processes spent in that window
    errors: list[str] = field(default_factory=list)

    def merge(self, other: Report) -> None:
        self.connected += other.connected
        self.failed += other.failed
        self.dropped += other.dropped
        self.events += other.events
        self.deliveries += other.deliveries
        self.latencies.extend(other.latencies)
        for name, count in other.names.items():
            self.names[name] = self.names.get(name, 0) + count
        self.elapsed = max(self.elapsed, other.elapsed)
        self.cpu += other.cpu
        self.errors = (self.errors + other.errors)[:5]


class Pipe:
    """A multiprocessing connection read from an event loop."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        asyncio.get_running_loop().add_reader(connection.fileno(), self._readable)
        # The loop may make the descriptor non-blocking; a report of many latencies is
        # bigger than the pipe's buffer, and must be written and read whole.
        os.set_blocking(connection.fileno(), True)

    def _readable(self) -> None:
        try:
            self.inbox.put_nowait(self.connection.recv())
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(self.connection.fileno())
            self.inbox.put_nowait(("eof",))

    def send(self, *message: Any) -> None:
        self.connection.send(message)

    async def recv(self, timeout: float) -> tuple[Any, ...]:
        return await asyncio.wait_for(self.inbox.get(), timeout)

    def close(self) -> None:
        try:
            asyncio.get_running_loop().remove_reader(self.connection.fileno())
        except (OSError, ValueError):
            pass
        self.connection.close()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _work(connection: Connection, job: Job) -> None:
    """One worker process: open its share of the connections, then obey the parent."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + job.lifetime
    pipe = Pipe(connection)
    tally = Tally()
    # Every request is made before the first connect: minting a token is the back end's
    # work, not the hub's, and must not slow the connects or fall in a counting window.
    plain = request(job.path, job.port)
    payloads = [
        subscriber_request(job.path_of(i), job.port, job.auth_key)
        if job.auth_key
        else request(job.path_of(i), job.port)
        for i in range(job.connections if job.auth_key or job.rooms else 0)
    ]
    protocols: list[SSEProtocol] = []
    report = Report()
    semaphore = asyncio.Semaphore(job.concurrency)

    def factory() -> SSEProtocol:
        payload = payloads.pop() if payloads else plain
        return SSEProtocol(
            payload, tally, latency=job.latency, by_name=job.by_name, pause=job.pause
        )

    async def open_one() -> None:
        async with semaphore:
            try:
                _, protocol = await loop.create_connection(factory, "127.0.0.1", job.port)
                protocols.append(protocol)
                status = await protocol.started
            except (OSError, ValueError) as exc:
                report.failed += 1
                if len(report.errors) < 5:
                    report.errors.append(f"{type(exc).__name__}: {exc}")
                return
            if status == 200:
                report.connected += 1
            else:
                report.failed += 1
                if len(report.errors) < 5:
                    report.errors.append(f"HTTP status {status}")

    opening = asyncio.gather(*(open_one() for _ in range(job.connections)))
    try:
        await asyncio.wait_for(opening, job.connect_timeout)
    except TimeoutError:
        report.failed = job.connections - report.connected
        report.errors.append(f"not all connected within {job.connect_timeout} s")
    pipe.send("ready", report.connected, report.failed, report.errors[:5])

    started = time.perf_counter()
    cpu = _cpu_seconds()
    while True:
        try:
            command = (await pipe.recv(max(0.0, give_up - loop.time())))[0]
        except TimeoutError:
            command = "stop"
        if command == "reset":
            tally.reset()
            started, cpu = time.perf_counter(), _cpu_seconds()
            pipe.send("reset")
        elif command == "poll":
            pipe.send("poll", tally.events, tally.deliveries)
        else:  # "stop", or the parent is gone
            break
    report.elapsed = time.perf_counter() - started
    report.cpu = _cpu_seconds() - cpu
    for protocol in protocols:
        protocol.close()
    report.events, report.deliveries, report.dropped = tally.events, tally.deliveries, tally.dropped
    report.latencies = tally.latencies
    report.names = {name.decode(errors="replace"): n for name, n in tally.names.items()}
    await asyncio.sleep(0)  # let the transports close
    if command != "eof":
        pipe.send("report", report)
    pipe.close()


def _worker_main(connection: Connection, job: Job) -> None:
    raise_nofile()
    run(_work(connection, job))


class LoadClient:
    """`job.connections` subscribers spread over `processes` worker processes.

    `async with LoadClient(job, 2) as client:` returns once every connection got its response
    head (or failed); then `reset()`, `poll()`, `stop()`.
    """

    def __init__(self, job: Job, processes: int) -> None:
        self.job = job
        self.processes = max(1, min(processes, job.connections))
        self.workers: list[multiprocessing.process.BaseProcess] = []
        self.pipes: list[Pipe] = []
        self.connected = 0
        self.failed = 0
        self.errors: list[str] = []
        self.report: Report | None = None

    async def __aenter__(self) -> LoadClient:
        context = multiprocessing.get_context("spawn")
        try:
            for index in range(self.processes):
                parent, child = context.Pipe()
                worker = context.Process(
                    target=_worker_main,
                    args=(child, self.job.share(index, self.processes)),
                    name=f"bench-client-{index}",
                    daemon=True,
                )
                worker.start()
                child.close()
                self.workers.append(worker)
                self.pipes.append(Pipe(parent))
            for answer in await self._gather(self.job.connect_timeout + 30):
                if answer[0] != "ready":
                    raise RuntimeError(f"a client process failed: {answer}")
                self.connected += answer[1]
                self.failed += answer[2]
                self.errors.extend(answer[3])
        except BaseException:
            await self._end()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._end()

    async def _gather(self, timeout: float) -> list[tuple[Any, ...]]:
        return list(await asyncio.gather(*(pipe.recv(timeout) for pipe in self.pipes)))

    async def _ask(self, command: str, timeout: float = 30.0) -> list[tuple[Any, ...]]:
        for pipe in self.pipes:
            pipe.send(command)
        return await self._gather(timeout)

    async def reset(self) -> None:
        """Start counting from now."""
        await self._ask("reset")

    async def poll(self) -> tuple[int, int]:
        """Events and deliveries so far, over every process."""
        answers = await self._ask("poll")
        return sum(a[1] for a in answers), sum(a[2] for a in answers)

    async def stop(self) -> Report:
        """Close every connection and collect the report."""
        report = Report()
        for answer in await self._ask("stop", timeout=60.0):
            if answer[0] != "report":
                raise RuntimeError(f"a client process failed: {answer}")
            report.merge(answer[1])
        report.connected, report.failed = self.connected, self.failed
        report.errors = (self.errors + report.errors)[:5]
        self.report = report
        return report

    async def _end(self) -> None:
        for pipe in self.pipes:
            pipe.close()
        self.pipes = []
        deadline = time.monotonic() + 10
        for worker in self.workers:
            while worker.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if worker.is_alive():
                worker.terminate()  # by its own pid: SIGTERM
                worker.join(5)
            if worker.is_alive():
                worker.kill()
                worker.join(5)
        self.workers = []


class _FirstFrame(asyncio.Protocol):
    def __init__(self, request: bytes) -> None:
        self.request = request
        self.buffer = b""
        self.sent = 0.0
        self.result: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.sent = time.perf_counter()
        cast(asyncio.Transport, transport).write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.result.done():
            return
        self.buffer += data
        if b"\ndata:" in self.buffer:
            self.result.set_result(time.perf_counter() - self.sent)
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.result.done():
            self.result.set_exception(exc or ConnectionError("closed before the first frame"))


async def first_frames(
    port: int, path: str, count: int, timeout: float = 5.0, auth_key: str | None = None
) -> list[float]:
    """Seconds from writing the request to the first `data:` line, on `count` fresh
    connections one after the other (each with a token of its own, given `auth_key`). A
    failed request raises."""
    loop = asyncio.get_running_loop()
    payloads = [subscriber_request(path, port, auth_key) for _ in range(count)]
    times = []
    for payload in payloads:
        transport, protocol = await asyncio.wait_for(
            loop.create_connection(functools.partial(_FirstFrame, payload), "127.0.0.1", port),
            timeout,
        )
        try:
            times.append(await asyncio.wait_for(protocol.result, timeout))
        finally:
            transport.close()
    return times


@dataclass
class PublishLog:
    ok: int = 0
    failed: int = 0
    late: int = 0  # publishes that found every connection busy and waited for one
    slowest: float = 0.0  # seconds: the longest request, write to response
    errors: list[str] = field(default_factory=list)

    def fail(self, error: str) -> None:
        self.failed += 1
        if len(self.errors) < 5:
            self.errors.append(error)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP response; its status and whether the connection stays open."""
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    status = int(head[9:12])
    if b"content-length:" in head:
        length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        await reader.readexactly(length)
    elif b"transfer-encoding: chunked" in head:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.read()
        return status, False
    return status, b"connection: close" not in head


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def publish(
    port: int,
    path: str,
    rate: float,
    count: int,
    body: Callable[[int, float], bytes],
    connections: int = 8,
    timeout: float = 30.0,
    auth_key: str | None = None,
    rooms: int = 0,
) -> PublishLog:
    """POST `count` bodies to `path`, `rate` per second on a fixed schedule; with `rooms`,
    `path` holds `{room}`, and publish `seq` goes to room `seq % rooms`.

    Each publish goes out at its time on an idle keep-alive connection (at most
    `connections` of them), so a slow response does not hold back the next publish and the
    offered rate stays `rate`. `body(seq, sent_at)` makes each body; `sent_at` is
    `time.time()` taken just before the request is written. Given `auth_key`, the publisher
    sends a token that grants it every topic.
    """
    credentials = token(auth_key, "publisher", publish=True)
    authorization = f"Authorization: Bearer {credentials}\r\n" if credentials else ""
    log = PublishLog()
    loop = asyncio.get_running_loop()
    idle: list[Stream] = []
    slots = asyncio.Semaphore(connections)
    opened: list[Stream] = []

    async def post(stream: Stream, seq: int) -> tuple[int, bool]:
        reader, writer = stream
        sent_at = time.time()
        data = body(seq, sent_at)
        target = path.format(room=seq % rooms) if rooms else path
        head = (
            f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{authorization}"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        writer.write(head.encode() + data)
        answer = await asyncio.wait_for(_read_response(reader), timeout)
        log.slowest = max(log.slowest, time.time() - sent_at)
        return answer

    async def one(seq: int) -> None:
        if slots.locked():
            log.late += 1
        async with slots:
            stream = idle.pop() if idle else None
            try:
                if stream is not None:
                    try:
                        status, keep = await post(stream, seq)
                    except (asyncio.IncompleteReadError, ConnectionError) as exc:
                        if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                            raise
                        # The server closed this keep-alive connection while it was idle
                        # (uvicorn does after 5 s): the request never got in; send it anew.
                        stream[1].close()
                        stream = None
                if stream is None:
                    stream = await asyncio.open_connection("127.0.0.1", port)
                    opened.append(stream)
                    status, keep = await post(stream, seq)
            except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as exc:
                log.fail(f"{type(exc).__name__}: {exc}")
                if stream is not None:
                    stream[1].close()
                return
            if 200 <= status < 300:
                log.ok += 1
            else:
                log.fail(f"HTTP status {status}")
            if keep:
                idle.append(stream)
            else:
                stream[1].close()

    start = loop.time()
    tasks = []
    try:
        for seq in range(count):
            delay = start + seq / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(seq)))
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        for _, writer in opened:
            writer.close()
    return log
