"""Topics in Redis Streams, shared by every hub process that points at the same Redis.

A topic is the stream `<prefix>topic:<name>`; publishing is `XADD` with an approximate
`MAXLEN` from the topic's history; a position is the Redis entry id (`1700000000000-0`), valid
in every process. Each process reads each topic it has subscribers for once (a *feed*), and
fans the entries out to its local readers: never a Redis read per subscriber. A feed starts
with its topic's first local subscriber and stops after the last. Feeds share a few reading
connections (`read_connections`), each blocking in one `XREAD` over all of its topics, re-issued
as they come and go: a thousand topics are read over four connections, not a thousand.

A keyed topic (`room/lobby`) is the stream `<prefix>topic:room/lobby`, made by its first
publish. Every publish sets it to expire once idle: after `max_age`, if its family has one,
else after the broker's `idle_ttl` (`--idle-ttl`, 24 h by default).

Resume: a new subscriber is registered with the feed first, then reads its replay with
`XRANGE` from its position; live entries the replay already holds are dropped, so the seam
has no gap and no duplicate. A position that is no longer in the stream (trimmed away, or lost
with a Redis that restarted without persistence) makes a gap. So does a position that is no
Redis entry id at all (the memory broker's `2r76ji.1`, held by browsers when a deployment moves
from memory to Redis): the subscriber is told, and gets everything retained. `max_age` trims
by entry id (`XTRIM MINID`): ids are Redis's clock in milliseconds.

Needs the `redis` extra (`pip install 'multistream-hub[redis]'`). The URL's query carries the
options, e.g. `redis://127.0.0.1:6379/0?prefix=myhub:&command_timeout=3`:
- `prefix`: the key prefix (default `hub:`);
- `lease_ttl`: a shared stream's lease, in seconds (default 10);
- `command_timeout`: the longest anything in the hub waits for Redis, in seconds (default 3;
  a feed's `XREAD` may take its 0.5 s block on top). A Redis that stops answering (frozen,
  a network cut) gives a publish its 503 and a subscriber its `hub.error` within that, never
  after minutes. A command given up on is not cancelled (see `RedisBroker.call`): if Redis
  wakes up, it still runs, so a publish answered 503 may yet land (at least once, like any
  request that timed out);
- `read_connections`: the most connections topics are read over, per process (default 4);
- redis-py's own options (`socket_timeout`, `max_connections`, ...: `REDIS_OPTIONS`, and
  `TLS_OPTIONS` with `rediss://`), which win over the hub's defaults.
Any other option is refused when the broker is made, naming the known ones: redis-py would take
it as a connection's keyword and fail only on connecting, which looks like a Redis that is down.

Trouble is logged once per process, not per subscriber or per command: one WARNING when Redis
goes away (a command fails to connect, or gets no answer within `command_timeout`), one INFO
when it is back (the next command that succeeds). Whatever else fails meanwhile for the same
reason (feeds, leases, producers) is logged at DEBUG, with no traceback.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ._fanout import Reader, Run, fan_out
from .base import (
    IDLE_TTL,
    Broker,
    BrokerSubscription,
    BrokerUnavailable,
    Entry,
    Gap,
    Interrupted,
    Lease,
    is_keyed,
)

__all__ = ["HUB_OPTIONS", "REDIS_OPTIONS", "TLS_OPTIONS", "RedisBroker"]

# The options a Redis URL may carry: the hub's own, then the redis-py ones passed through to
# it (not those that would break the hub, such as `decode_responses` or `protocol`).
HUB_OPTIONS = ("command_timeout", "lease_ttl", "prefix", "read_connections")
REDIS_OPTIONS = (
    "client_name",
    "db",
    "health_check_interval",
    "max_connections",
    "password",
    "retry_on_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "socket_read_size",
    "socket_timeout",
    "username",
)
TLS_OPTIONS = (
    "ssl_ca_certs",
    "ssl_ca_data",
    "ssl_ca_path",
    "ssl_cert_reqs",
    "ssl_certfile",
    "ssl_check_hostname",
    "ssl_ciphers",
    "ssl_exclude_verify_flags",
    "ssl_include_verify_flags",
    "ssl_keyfile",
    "ssl_min_version",
    "ssl_password",
)

T = TypeVar("T")

logger = logging.getLogger("hub")

_POSITION = re.compile(r"(\d{1,20})-(\d{1,20})")
_ID_MAX = 2**64 - 1  # each half of a Redis entry id is an unsigned 64-bit number
_FIELD = b"d"  # the event's JSON, the only field of an entry
# How long one XREAD waits: how soon a feed notices it is unneeded, and how long closing the
# broker may wait for the last one.
_BLOCK_MS = 500
_COMMAND_TIMEOUT = 3.0  # seconds: the default of the URL's `command_timeout`
_READ_CONNECTIONS = 4  # the default of the URL's `read_connections`

# A lease is a key holding its holder's token, with an expiry. Renewing and releasing must
# only touch it while it is still ours: check and act in one step, in Redis.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:" if parts.username else ":"
    return urlunsplit(parts._replace(netloc=f"{user}***@{netloc}"))


def _check_options(url: str, options: list[str]) -> None:
    scheme = urlsplit(url).scheme
    for name in options:
        if (
            name in HUB_OPTIONS
            or name in REDIS_OPTIONS
            or (name in TLS_OPTIONS and scheme == "rediss")
        ):
            continue
        if name in TLS_OPTIONS:
            raise ValueError(
                f"{name!r} is an option of rediss:// (Redis over TLS), not of {scheme}://: "
                f"{_without_password(url)}"
            )
        close = difflib.get_close_matches(name, HUB_OPTIONS + REDIS_OPTIONS + TLS_OPTIONS, 1)
        raise ValueError(
            f"unknown option {name!r} in the Redis URL {_without_password(url)}"
            + (f" (did you mean {close[0]!r}?)" if close else "")
            + f"; the hub's options: {', '.join(HUB_OPTIONS)}; redis-py's: "
            f"{', '.join(REDIS_OPTIONS)}; with rediss://, also {', '.join(TLS_OPTIONS)}"
        )


def _seconds(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0
    if not value > 0:
        raise ValueError(f"the Redis URL's {name} must be a number of seconds > 0, got {text!r}")
    return value


def _order(position: str) -> tuple[int, int]:
    ms, _, seq = position.partition("-")
    return int(ms), int(seq or 0)


def _is_redis_id(position: str) -> bool:
    """Whether `position` is an entry id as this broker gives them: `<ms>-<seq>`.

    Anything else that passed `Broker.check_position` is another broker's position (the
    memory broker's `2r76ji.1`, after a deployment moved to Redis), answered with a gap."""
    match = _POSITION.fullmatch(position)
    return match is not None and max(int(match[1]), int(match[2])) <= _ID_MAX


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _entries(topic: str, items: Sequence[tuple[bytes, dict[bytes, bytes]]]) -> list[Entry]:
    """Redis stream items (`XREAD`, `XRANGE`) as entries, each encoded once."""
    return [
        Entry.encode(topic, item_id.decode(), fields[_FIELD].decode()) for item_id, fields in items
    ]


class _Feed:
    """One topic read for this process's subscribers: where reading has got to, and who reads.

    Made by the topic's first local subscriber, it learns where the topic ends (`started`),
    then joins one of the broker's reading connections (`_Reading`); it leaves as soon as its
    last reader does."""

    def __init__(self, broker: RedisBroker, topic: str) -> None:
        self.broker = broker
        self.topic = topic
        self.key = broker.key(topic)
        self.after = "0-0"  # the last id read
        self.readers: set[Reader] = set()
        self.ended = False
        # Made synchronously, so that two subscribers arriving together share one feed; where
        # it starts reading is known once `started` is done.
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(self._start(), name=f"hub redis feed {topic}")

    async def _start(self) -> None:
        try:
            self.after = await self.broker.last_position(self.topic)
        except Exception as exc:
            self.started.set_exception(exc)
            self.fail(exc)
            return
        self.started.set_result(None)
        if self.readers:
            self.broker.reading.add(self)
        else:
            self.end()

    def vacated(self) -> None:
        if self.started.done():  # else its start finds nobody, and ends it
            self.end()

    def end(self) -> None:
        """Stop reading: no reader is left, or reading failed."""
        if not self.ended:
            self.ended = True
            self.broker.feed_ended(self)

    def fail(self, exc: Exception) -> None:
        """Reading failed: every reader gets `hub.error`, and resumes when it comes back."""
        reason = str(exc if isinstance(exc, BrokerUnavailable) else self.broker.unavailable(exc))
        self.end()
        for reader in list(self.readers):
            reader.fail(Interrupted(reason), keep_backlog=True)


class _Connection:
    """One reading connection: a blocking `XREAD` over every topic of its feeds at once,
    re-issued as they come and go. A feed that joins while it blocks unblocks it (`CLIENT
    UNBLOCK`), so that it is read at once rather than after the block.

    The connection is its own, outside any pool, and its command is packed here: the keys
    once as they change, each topic's id when it moves. Re-issued after every read, an XREAD
    over hundreds of keys would otherwise cost more to encode than all the rest of a publish.
    """

    def __init__(self, reading: _Reading, connection: Any) -> None:
        self.reading = reading
        self.broker = reading.broker
        self.connection = connection
        self.feeds: dict[bytes, _Feed] = {}  # by key
        self._ids: dict[bytes, bytes] = {}  # each key's id, packed, in the order of `feeds`
        self._keys: bytes | None = None  # every key, packed; None when they changed
        self.client_id: int | None = None  # the connection's, for CLIENT UNBLOCK
        self.reads = 0  # XREADs issued, the current one's number while blocked
        self.blocked: int | None = None  # the number of the XREAD blocking now, if one is
        self.unblocking = False
        self.joined = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name="hub redis reading")

    def add(self, feed: _Feed) -> None:
        key = feed.key.encode()
        self.feeds[key] = feed
        self._ids[key] = _bulk(feed.after.encode())
        self._keys = None
        self.joined.set()
        if self.blocked is not None and not self.unblocking:
            self.unblocking = True
            self.broker.spawn(self._unblock(self.blocked))

    def remove(self, feed: _Feed) -> None:
        key = feed.key.encode()
        if self.feeds.get(key) is feed:
            del self.feeds[key], self._ids[key]
            self._keys = None

    def _command(self) -> bytes:
        """`XREAD COUNT 1000 BLOCK <ms> STREAMS <keys> <ids>`, packed."""
        if self._keys is None:
            self._keys = b"".join(_bulk(key) for key in self.feeds)
        head = b"*%d\r\n" % (6 + 2 * len(self.feeds)) + _XREAD
        return b"".join((head, self._keys, *self._ids.values()))

    async def _xread(self, command: bytes) -> Any:
        connection = self.connection
        try:
            await connection.send_packed_command(command)
            return await connection.read_response()
        except BaseException:
            await connection.disconnect()  # half a command, or a reply never read: start over
            raise

    async def _client_id(self) -> int:
        await self.connection.send_command("CLIENT", "ID")
        return int(await self.connection.read_response())

    async def _unblock(self, read: int) -> None:
        """Wake XREAD number `read`, so that it is re-issued with the feeds that joined."""
        broker, client_id = self.broker, self.client_id
        try:
            for delay in (0.0, 0.002, 0.01, 0.05):
                if delay:
                    await asyncio.sleep(delay)  # the XREAD may not have reached Redis yet
                if self.blocked != read or client_id is None:
                    return
                if await broker.call(lambda client: client.client_unblock(client_id)):
                    return
            self.client_id = None  # not blocked after all: a new connection? Ask again.
        except BrokerUnavailable:
            pass  # the XREAD fails too, and says so
        finally:
            self.unblocking = False

    async def _run(self) -> None:
        broker = self.broker
        while True:
            if not self.feeds:
                self.joined.clear()
                await self.joined.wait()
                continue
            try:
                if self.client_id is None:
                    self.client_id = await broker.call(lambda _: self._client_id())
                    if not self.feeds:
                        continue  # all left meanwhile: an XREAD of no key is an error
                command = self._command()
                self.reads += 1
                self.blocked = self.reads
                try:
                    reply = await broker.call(
                        lambda _, command=command: self._xread(command),  # type: ignore[misc]
                        blocking=_BLOCK_MS / 1000,
                    )
                finally:
                    self.blocked = None
                for key, items in reply.items() if isinstance(reply, dict) else reply or ():
                    feed = self.feeds.get(key)
                    if feed is None or not items:
                        continue  # it left while the XREAD was out
                    entries = [
                        Entry.encode(feed.topic, item_id.decode(), _field(fields))
                        for item_id, fields in items
                    ]
                    feed.after = entries[-1].position
                    self._ids[key] = _bulk(feed.after.encode())
                    family = feed.topic.partition("/")[0]
                    broker.delivered[family] += len(entries) * len(feed.readers)
                    await fan_out(feed.readers, Run(entries))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, BrokerUnavailable):  # the broker said so, once
                    logger.debug("reading %d topics stopped: %s", len(self.feeds), exc)
                else:
                    logger.exception("reading %d topics from Redis failed", len(self.feeds))
                self.client_id = None
                for feed in list(self.feeds.values()):
                    feed.fail(exc)
                self.feeds.clear()
                self._ids.clear()
                self._keys = None


def _bulk(value: bytes) -> bytes:
    """`value` as a RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


_XREAD = b"".join(_bulk(arg) for arg in (b"XREAD", b"COUNT", b"1000", b"BLOCK", b"%d" % _BLOCK_MS))
_XREAD += _bulk(b"STREAMS")


def _field(fields: Any) -> str:
    """The event's JSON from an entry's fields: `[b"d", json]` (a map, with RESP3 at times)."""
    if isinstance(fields, dict):
        return cast(bytes, fields[_FIELD]).decode()
    return cast(bytes, fields[list(fields).index(_FIELD) + 1]).decode()


class _Reading:
    """The connections a process reads its topics over: at most `limit`, however many topics.
    A feed joins the one with the fewest; a new connection opens only while every open one
    has some."""

    def __init__(self, broker: RedisBroker, limit: int, make_connection: Callable[[], Any]) -> None:
        self.broker = broker
        self.limit = limit
        self.make_connection = make_connection
        self.connections: list[_Connection] = []
        self.of: dict[_Feed, _Connection] = {}

    def add(self, feed: _Feed) -> None:
        open_ = self.connections
        if len(open_) < self.limit and all(c.feeds for c in open_):
            connection = _Connection(self, self.make_connection())
            open_.append(connection)
        else:
            connection = min(open_, key=lambda c: len(c.feeds))
        self.of[feed] = connection
        connection.add(feed)

    def remove(self, feed: _Feed) -> None:
        connection = self.of.pop(feed, None)
        if connection is not None:
            connection.remove(feed)


class _RedisLease(Lease):
    """A shared producer's lease: `<prefix>lease:<name>` holds our token until it expires,
    renewed every third of its time to live while the producer runs."""

    def __init__(self, broker: RedisBroker, name: str, token: str, expires: float) -> None:
        self.broker = broker
        self.name = name
        self.token = token
        self.expires = expires  # loop time by which it has lapsed unless renewed

    async def kept(self) -> None:
        broker, loop = self.broker, asyncio.get_running_loop()
        ttl = broker.lease_ttl
        # Give up a little before the lease lapses, leaving time to stop the producer before
        # another process may take over.
        margin = ttl / 10
        while True:
            await asyncio.sleep(ttl / 3)
            sent = loop.time()
            try:
                # Never wait for an answer past that: by then it may be another's.
                async with asyncio.timeout(max(self.expires - margin - sent, 0)):
                    renewed = await broker.call(
                        lambda _: broker.renew_script(
                            keys=[broker.lease_key(self.name)], args=[self.token, int(ttl * 1000)]
                        )
                    )
            except (BrokerUnavailable, TimeoutError) as exc:
                if loop.time() + ttl / 3 < self.expires - margin:
                    continue  # there is time for one more try
                # While Redis is away, the broker has said so: this is only a consequence.
                logger.log(
                    logging.WARNING if broker.available else logging.DEBUG,
                    "shared stream %r stops here: its lease could not be renewed (%s)",
                    self.name,
                    str(exc) or type(exc).__name__,
                )
                return
            if not renewed:
                logger.warning(
                    "shared stream %r stops here: another process holds its lease now", self.name
                )
                return
            self.expires = sent + ttl

    async def release(self) -> None:
        broker = self.broker
        try:
            async with asyncio.timeout(1):
                await broker.call(
                    lambda _: broker.release_script(
                        keys=[broker.lease_key(self.name)], args=[self.token]
                    )
                )
        except (BrokerUnavailable, TimeoutError):
            pass  # it lapses by itself


class RedisBroker(Broker):
    def __init__(self, url: str, *, idle_ttl: float = IDLE_TTL) -> None:
        super().__init__(idle_ttl=idle_ttl)
        try:
            import redis.asyncio as redis
        except ImportError:  # pragma: no cover - depends on the installation
            raise ValueError(
                "the redis:// broker needs redis-py: pip install 'multistream-hub[redis]'"
            ) from None
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        _check_options(url, list(query))
        self.prefix = query.pop("prefix", "hub:")
        self.lease_ttl = _seconds(query.pop("lease_ttl", "10"), "lease_ttl")
        self.lease_retry = min(1.0, self.lease_ttl / 3)
        self.command_timeout = _seconds(
            query.pop("command_timeout", str(_COMMAND_TIMEOUT)), "command_timeout"
        )
        given = query.pop("read_connections", str(_READ_CONNECTIONS))
        if not (given.isdigit() and 1 <= int(given) <= 64):
            raise ValueError(
                "the Redis URL's read_connections must be a whole number from 1 to 64, got "
                f"{given!r}"
            )
        read_connections = int(given)
        # Shown in /health and in errors sent to clients: never with its password.
        self.url = _without_password(url)
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff

        address = urlunsplit(parts._replace(query=urlencode(query)))
        options: dict[str, Any] = {
            # After Redis restarts, pooled connections are stale: retry on a fresh one,
            # briefly backing off, rather than fail the first command that meets one. Not
            # after a timeout: the command may have run (an XADD would then run twice), and
            # its caller has stopped waiting anyway (see `call`).
            "retry": Retry(
                ExponentialBackoff(cap=1.0, base=0.05),
                retries=3,
                supported_errors=(redis.ConnectionError,),
            ),
            "retry_on_error": [redis.ConnectionError],
            # Callers wait `command_timeout` at most (see `call`); these bound how long a
            # command they gave up on keeps its connection. A read must outlast XREAD's
            # block. The URL's own `socket_timeout` / `socket_connect_timeout` win.
            "socket_connect_timeout": min(5.0, self.command_timeout + 1),
            "socket_timeout": self.command_timeout + _BLOCK_MS / 1000 + 1,
        }
        # Commands share a bounded pool and wait their turn for a connection: a burst of a
        # thousand subscribers is a queue of quick commands, not a thousand connections (or
        # redis-py's "Too many connections"). A command waits for a connection no longer
        # than its caller waits for it. The URL's `max_connections` wins.
        self.client: Any = redis.Redis.from_pool(  # owns the pool: closing closes it
            redis.BlockingConnectionPool.from_url(
                address, max_connections=50, timeout=self.command_timeout, **options
            )
        )
        # Topics are read over connections of their own, `read_connections` at most, each
        # blocking in one XREAD over many topics (`_Reading`): they never keep commands
        # waiting, and a thousand topics do not take a thousand connections. Named, to be
        # told apart in CLIENT LIST.
        read_query = {k: v for k, v in query.items() if k != "max_connections"}
        read_address = urlunsplit(parts._replace(query=urlencode(read_query)))

        reading = redis.ConnectionPool.from_url(
            read_address, client_name=f"{self.prefix}read", **options
        )

        def reading_connection() -> Any:  # one of its own, outside any pool
            return reading.connection_class(**reading.connection_kwargs)

        self.reading = _Reading(self, read_connections, reading_connection)
        self._spawned: set[asyncio.Task[Any]] = set()
        # What redis-py raises when Redis is down or drops the connection.
        self.errors: tuple[type[Exception], ...] = (
            redis.ConnectionError,
            redis.TimeoutError,
            OSError,
        )
        self.renew_script = self.client.register_script(_RENEW)
        self.release_script = self.client.register_script(_RELEASE)
        # Who holds a lease, for whoever looks at it in Redis: host, process, and one run.
        self._holder = f"{socket.gethostname()}:{os.getpid()}"
        self._feeds: dict[str, _Feed] = {}
        self._commands: set[asyncio.Future[Any]] = set()
        self._given_up: set[asyncio.Future[Any]] = set()  # commands past their deadline
        # Whether Redis answers, as the last command found: None until one has. Flipped by
        # the outcome of commands, and logged only when it flips: one line per outage, not
        # one per subscriber or command. `_era` counts the comebacks, so that a command sent
        # before Redis came back, and failing late, cannot say it went away again.
        self._up: bool | None = None
        self._era = 0
        self._away_since: float | None = None  # when its going away was logged

    @property
    def available(self) -> bool:
        """False while Redis is known to be away (since a command failed to reach it)."""
        return self._up is not False

    async def call(self, command: Callable[[Any], Awaitable[T]], *, blocking: float = 0.0) -> T:
        """`command(client)`, in a task of its own that is never cancelled, waited for
        `command_timeout` seconds at most (plus `blocking`, for a blocking command).

        redis-py (8.1) can swallow a cancellation that arrives during a command, and return
        as if nothing happened, or leave the connection broken by it. So a caller that is
        cancelled, or that has waited long enough, stops waiting at once, and the command
        finishes by itself (its socket timeout bounds that), its answer dropped. Raises
        `BrokerUnavailable` when Redis cannot be reached or does not answer in time.
        """
        loop, era = asyncio.get_running_loop(), self._era
        task = asyncio.ensure_future(command(self.client))
        # The caller waits on a future of its own, which the command's end or the deadline
        # resolves: neither a cancellation nor the deadline reaches the command's task.
        waiter = loop.create_future()

        def settled(done: asyncio.Future[T]) -> None:
            self._commands.discard(done)
            if self._given_up:
                self._given_up.discard(done)
            self._settled(done, era)
            if not waiter.done():
                waiter.set_result(None)

        self._commands.add(task)
        task.add_done_callback(settled)
        deadline = loop.call_later(self.command_timeout + blocking, _resolve, waiter)
        try:
            await waiter
        finally:
            deadline.cancel()
        if not task.done():
            self._given_up.add(task)
            self._went_away(era, f"no answer within {self.command_timeout:g} s")
            raise self.unavailable(TimeoutError(f"no answer within {self.command_timeout:g} s"))
        try:
            return task.result()
        except self.errors as exc:
            raise self.unavailable(exc) from exc

    def _settled(self, task: asyncio.Future[Any], era: int) -> None:
        """A command's outcome, waited for or not, tells whether Redis answers."""
        if task.cancelled():
            return
        error = task.exception()  # retrieved here: never "exception was never retrieved"
        if error is None:
            self._came_back()
        elif isinstance(error, self.errors):
            self._went_away(era, str(error) or type(error).__name__)

    def _went_away(self, era: int, why: str) -> None:
        if self._up is False or era != self._era:
            return  # said already, or a command from before Redis came back
        up, self._up = self._up, False
        if up:  # not at start: there the caller reports it
            self._away_since = time.monotonic()
            logger.warning(
                "the Redis broker at %s is unavailable (%s): publishing answers 503 and topic "
                "subscribers get hub.error until it is back",
                self.url,
                why,
            )

    def _came_back(self) -> None:
        if self._up is False:
            self._era += 1
            if self._away_since is not None:
                logger.info(
                    "the Redis broker at %s is back, after %.1f s",
                    self.url,
                    time.monotonic() - self._away_since,
                )
                self._away_since = None
        self._up = True

    async def transaction(
        self, build: Callable[[Any], None], *, raise_on_error: bool = True
    ) -> list[Any]:
        """Run the commands `build(pipeline)` queues in one MULTI/EXEC (see `call`)."""

        async def run(client: Any) -> list[Any]:
            async with client.pipeline(transaction=True) as pipe:
                build(pipe)
                return cast(list[Any], await pipe.execute(raise_on_error=raise_on_error))

        return await self.call(run)

    def key(self, topic: str) -> str:
        return f"{self.prefix}topic:{topic}"

    def lease_key(self, name: str) -> str:
        return f"{self.prefix}lease:{name}"

    async def lease(self, name: str) -> Lease | None:
        token = f"{self._holder}:{secrets.token_hex(4)}"
        asked = asyncio.get_running_loop().time()
        granted = await self.call(
            lambda client: client.set(
                self.lease_key(name), token, nx=True, px=int(self.lease_ttl * 1000)
            )
        )
        return _RedisLease(self, name, token, asked + self.lease_ttl) if granted else None

    def spawn(self, command: Awaitable[Any]) -> None:
        """Run `command` in the background, kept until it is done."""
        task = asyncio.ensure_future(command)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    def unavailable(self, exc: BaseException) -> BrokerUnavailable:
        return BrokerUnavailable(f"the Redis broker at {self.url} is unavailable: {exc}")

    async def start(self) -> None:
        try:
            await self.call(lambda client: client.ping())
        except BrokerUnavailable:
            raise
        except Exception as exc:  # e.g. a refused password
            raise self.unavailable(exc) from exc

    async def close(self) -> None:
        feeds = list(self._feeds.values())
        self._feeds.clear()
        tasks: list[asyncio.Future[Any]] = [feed.task for feed in feeds]
        tasks += [c.task for c in self.reading.connections] + list(self._spawned)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if running := self._commands - self._given_up:
            # Left running by callers that were cancelled (a feed's XREAD, within its block):
            # let them finish, or redis-py would retry them on fresh connections. Not those
            # already given up on: Redis did not answer them in time, and will not now.
            await asyncio.wait(running, timeout=_BLOCK_MS / 1000 + 1)
        # What is still running has no answer coming (Redis frozen, or gone with no word):
        # its connections are closed next, and nobody waits for it.
        for task in list(self._commands):
            task.cancel()
        closing = [self.client.aclose()]
        closing += [c.connection.disconnect() for c in self.reading.connections]
        for close in closing:
            try:
                async with asyncio.timeout(1):
                    await close
            except Exception as exc:  # a connection that will not close cleanly: let it go
                logger.debug("closing the Redis connections: %r", exc)
        self.reading.connections.clear()

    async def last_position(self, topic: str) -> str:
        newest = await self.call(lambda client: client.xrevrange(self.key(topic), count=1))
        return newest[0][0].decode() if newest else "0-0"

    async def bounds(self, topic: str) -> tuple[str, str] | None:
        key = self.key(topic)

        def build(pipe: Any) -> None:
            self._trim_by_age(pipe, topic, exact=True)
            pipe.xrange(key, count=1)
            pipe.xrevrange(key, count=1)

        *_, oldest, newest = await self.transaction(build)
        if not oldest:
            return None
        return oldest[0][0].decode(), newest[0][0].decode()

    def _trim_by_age(self, pipe: Any, topic: str, *, exact: bool) -> None:
        """Queue the trimming of events older than the topic's `max_age`, if it has one.

        The cut-off is an entry id made from this process's clock, against ids made from
        Redis's clock: keep the clocks in step (NTP)."""
        max_age = self.config(topic).max_age
        if max_age is not None:
            oldest_kept = max(int((time.time() - max_age) * 1000), 0)
            pipe.xtrim(self.key(topic), minid=oldest_kept, approximate=not exact)

    async def publish(self, topic: str, data: Sequence[str]) -> list[Entry]:
        key, history = self.key(topic), max(self.config(topic).history, 1)

        def build(pipe: Any) -> None:
            for item in data:
                pipe.xadd(key, {_FIELD: item}, maxlen=history, approximate=True)
            self._trim_by_age(pipe, topic, exact=False)
            if is_keyed(topic):
                # A key's topic lives on while it is used: it expires once idle.
                pipe.pexpire(key, int((self.config(topic).max_age or self.idle_ttl) * 1000))

        ids = (await self.transaction(build))[: len(data)]
        return [
            Entry.encode(topic, entry_id.decode(), item)
            for entry_id, item in zip(ids, data, strict=True)
        ]

    async def subscribe(self, topic: str, after: str, buffer: int) -> BrokerSubscription:
        self.check_position(after)
        feed = self._feeds.get(topic)
        if feed is None or feed.ended:
            feed = self._feeds[topic] = _Feed(self, topic)
        reader = Reader(feed, [], buffer, None)
        feed.readers.add(reader)  # first: what is published from now on reaches it
        try:
            await asyncio.shield(feed.started)
            replay, newest, gap = await self._history(topic, after)
        except BaseException:
            await reader.close()
            raise
        # Live entries that the replay already holds (or, after a gap with nothing to
        # replay, that existed when it was read) are dropped: no duplicate at the seam.
        reader.replay(replay, lambda entry: _order(entry.position) <= newest)
        reader.gap = gap
        return reader

    async def _history(
        self, topic: str, after: str
    ) -> tuple[list[Entry], tuple[int, int], Gap | None]:
        """The entries after `after`, the position the replay covers up to, and a gap if
        `after` is not in the retained history.

        A position this hub gave is an entry of the stream, or `0-0` for a topic that was
        empty. Reading from `after` inclusive shows whether it is still there, in the same
        round trip as the replay. If it is not, it was trimmed away, or it comes from a
        history Redis lost (a restart without persistence, a failover to a replica that was
        behind): either way events may be missing, and the subscriber is told. A position
        that is not a Redis entry id (another broker's) is a gap too, with all that is retained.
        """
        key = self.key(topic)
        ours = _is_redis_id(after)
        empty = ours and _order(after) == (0, 0)

        def build(pipe: Any) -> None:
            self._trim_by_age(pipe, topic, exact=True)
            # Another broker's position says nothing of this stream: replay all of it.
            pipe.xrange(key, min=after if ours else "-", max="+")
            pipe.xrevrange(key, count=1)
            if empty:
                pipe.xinfo_stream(key)

        results = await self.transaction(build, raise_on_error=False)
        for result in results[: len(results) - empty]:
            if isinstance(result, Exception):
                raise result  # XINFO alone may fail: on a stream that does not exist yet
        if empty:
            *_, items, newest_item, info = results
            # A cursor taken while the topic was empty: events are missing only if some
            # were dropped since (entries-added counts every entry the stream ever had).
            missing = not isinstance(info, Exception) and int(info["entries-added"]) > int(
                info["length"]
            )
        elif ours:
            *_, items, newest_item = results
            found = bool(items) and _order(items[0][0].decode()) == _order(after)
            if found:
                items = items[1:]
            missing = not found
        else:
            *_, items, newest_item = results
            missing = True
        replay = _entries(topic, items)
        if replay:
            covered = _order(replay[-1].position)
        elif missing:
            covered = _order(newest_item[0][0].decode()) if newest_item else (0, 0)
        else:
            covered = _order(after)
        gap = None
        if missing:
            resumed_from = replay[0].position if replay else "{}-{}".format(*covered)
            gap = Gap(after, resumed_from)
        return replay, covered, gap

    def feed_ended(self, feed: _Feed) -> None:
        if self._feeds.get(feed.topic) is feed:
            del self._feeds[feed.topic]
        self.reading.remove(feed)

    def topics(self) -> int:
        return len(self._feeds)

    def interrupt(self, topic: str, reason: str | None) -> None:
        feed = self._feeds.get(topic)
        for reader in list(feed.readers if feed else ()):
            reader.fail(Interrupted(reason), keep_backlog=True)

    def buffered(self) -> tuple[int, int]:
        sizes = [reader.buffered for feed in self._feeds.values() for reader in feed.readers]
        return sum(sizes), max(sizes, default=0)
