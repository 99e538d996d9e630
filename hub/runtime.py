"""The running hub: registry, broker and shared producers, and publishing into topics."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time
from collections import Counter, deque
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from contextlib import aclosing
from types import TracebackType
from typing import Any, ClassVar, Protocol, cast

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from .auth import Access, Auth, AuthConfigError
from .brokers import SLICE, Broker, BrokerUnavailable, Entry, Lease, broker_from_url
from .errors import RequestError
from .events import Event, control_body, encode_retry
from .limits import Limits
from .merge import Activity, frames
from .registry import Registry, Topic
from .settings import Settings
from .subscription import Subscription, find_stream, parse_subscription

__all__ = ["Hub", "load_auth", "publish"]

logger = logging.getLogger("hub")

# How deep a published event may nest objects and arrays.
MAX_DEPTH = 32
# Problems listed in a refusal, at most: a batch of 50,000 bad events gets a short answer.
MAX_ERRORS = 100
# The loop's lateness is sampled this often, and the last samples kept (10 s of them).
LAG_EVERY = 0.05
LAG_SAMPLES = 200


class Response(Protocol):
    """What the hub needs of an open SSE response (`hub.sse.SSEResponse`)."""

    client: str | None  # the address whose stream it is, counted by the limits
    transport: str  # "sse", "ws": connections are counted by it

    def close(self, last: bytes = b"") -> None: ...

    def look_after(self, now: float, ping_interval: float, send_timeout: float) -> None: ...


class Hub:
    """The streams of one process and the broker behind its topics.

    `async with Hub(registry) as hub:` starts it (and its eager producers); the app does
    that in its lifespan. The hub last started in a process is the one `hub.publish()` uses.
    """

    current: ClassVar[Hub | None] = None

    def __init__(
        self,
        registry: Registry,
        settings: Settings | None = None,
        broker: Broker | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings if settings is not None else Settings()
        self.broker = (
            broker
            if broker is not None
            else broker_from_url(
                self.settings.broker,
                max_topics=self.settings.max_topics,
                idle_ttl=self.settings.idle_ttl,
            )
        )
        self.activity = Activity()
        self.limits = Limits(self.settings)
        self.auth = load_auth(self.settings)
        self.producers = Producers(self)
        self.topics = {d.name: d for d in registry if isinstance(d, Topic)}
        self._responses: set[Response] = set()
        self._keep_alive: asyncio.Task[None] | None = None
        self._lag_watch: asyncio.Task[None] | None = None
        self._lags: deque[float] = deque(maxlen=LAG_SAMPLES)
        # Shutdown: set once it begins, with the loop time by which every connection is
        # gone (`begin_shutdown`); called back then, e.g. by `hub serve`'s exit watchdog.
        self.stopping = False
        self.shutdown_deadline: float | None = None
        self.on_shutdown: list[Callable[[float], None]] = []
        for definition in self.topics.values():
            self.broker.declare(definition.name, definition.config, keyed=definition.keyed)

    async def start(self) -> None:
        await self.broker.start()
        Hub.current = self
        logger.info("limits: %s", self.limits.describe())
        logger.info("authorization: %s", self.auth.describe())
        if not self.auth.enabled and not _loopback(self.settings.host):
            logger.warning(
                "authorization is off and the hub listens on %s: anyone who can reach it may "
                "read every stream and publish to every topic (--auth-key, --auth-public-key)",
                self.settings.host,
            )
        for pattern in self.auth.unmatched_public(self.registry):
            logger.warning(
                "--public %r matches no stream (streams: %s)",
                pattern,
                ", ".join(self.registry.names()),
            )
        checks = [t / 2 for t in (self.settings.ping_interval, self.settings.send_timeout) if t]
        if checks:
            self._keep_alive = asyncio.create_task(self._look_after_responses(min(checks)))
        self._lag_watch = asyncio.create_task(self._watch_lag())
        for definition in self.topics.values():
            if definition.producer is not None and definition.eager:
                self.producers.acquire(definition)

    def track(self, response: Response) -> None:
        """Keep an open response, to ping while it is quiet and to close at shutdown."""
        if response not in self._responses:
            self._responses.add(response)
            self.activity.connections[response.transport] += 1

    def untrack(self, response: Response) -> None:
        if response in self._responses:
            self._responses.discard(response)
            self.activity.connections[response.transport] -= 1
        if response.client is not None:
            self.limits.release(response.client)

    def close_responses(self) -> None:
        """End every open response with `hub.shutdown`: the server is stopping, and streams
        never end alone. Each gets a `retry:` hint of its own, spread over one to two times
        `--retry`, so that a stopping instance's clients do not all come back at once."""
        retry = self.settings.retry
        for response in list(self._responses):
            response.close(
                encode_retry(random.randint(retry, 2 * retry))
                + control_body("shutdown", reason="the hub is shutting down; reconnect")
            )

    def begin_shutdown(self) -> None:
        """The server stops (SIGTERM, SIGINT): refuse new streams, end the open ones, and set
        the deadline by which every connection is gone, leaving room in `--shutdown-grace`
        to close the broker. Idempotent."""
        if self.stopping:
            return
        self.stopping = True
        grace = self.settings.shutdown_grace
        loop = asyncio.get_running_loop()
        self.shutdown_deadline = loop.time() + max(grace - 2.0, grace / 2)
        if self._responses:
            logger.info("shutting down: ending %d open streams", len(self._responses))
        self.close_responses()
        for callback in self.on_shutdown:
            callback(grace)

    async def _look_after_responses(self, every: float) -> None:
        # One task for all connections instead of timers in each: it pings the quiet ones and
        # cuts off the ones stuck in a send. Run every half of the shorter interval, so that
        # none waits more than one and a half intervals for either.
        ping_interval, send_timeout = self.settings.ping_interval, self.settings.send_timeout
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            for response in list(self._responses):
                response.look_after(now, ping_interval, send_timeout)

    async def _watch_lag(self) -> None:
        # How late the loop wakes a sleeper: the longest anything kept it from serving others.
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(LAG_EVERY)
            self._lags.append(max(loop.time() - asked - LAG_EVERY, 0.0))

    def loop_lag(self) -> float:
        """The longest the event loop was late, in seconds, over the last 10 s or so."""
        return max(self._lags, default=0.0)

    async def stop(self) -> None:
        self.begin_shutdown()
        for task in (self._keep_alive, self._lag_watch):
            if task is not None:
                task.cancel()
        self.close_responses()
        await self.producers.stop()
        await self.broker.close()
        if Hub.current is self:
            Hub.current = None

    async def __aenter__(self) -> Hub:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def open(
        self,
        names: Sequence[str],
        query: Iterable[tuple[str, str]] = (),
        last_event_id: str | None = None,
        access: Access | None = None,
    ) -> Subscription:
        """A validated subscription to the streams `names`, with the stream parameters
        `query` (pairs, repeats included) and the cursor `last_event_id`, for the caller
        `access` (trusted code when None); or the `RequestError` every way in answers with.
        Nothing is opened yet: `frames()` does that."""
        return parse_subscription(
            self.registry,
            names,
            query,
            last_event_id,
            max_streams=self.settings.max_streams,
            check_position=self.broker.check_position,
            access=access if access is not None else _TRUSTED,
        )

    def frames(
        self,
        subscription: Subscription,
        *,
        preamble: bytes = b"",
        direct: Callable[[bytes], bool] | None = None,
        drop: Callable[[str], None] | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """The subscription's frames, after `preamble`; close it (`contextlib.aclosing`) to
        end it promptly. `direct` and `drop`: see `hub.merge.frames`."""
        return frames(subscription, self, preamble, direct, drop)

    async def publish(self, name: str, events: Iterable[Event | Mapping[str, Any]]) -> list[Entry]:
        """Validate and publish events to the topic `name`, in order, all or none.

        Raises `RequestError` (404 unknown, 405 not a publishable topic, 422 invalid), which
        the app answers as is, and `BrokerUnavailable`. A large batch is validated and
        encoded a slice at a time, letting the loop serve others in between.
        """
        definition = self.publishable(name)
        data = await self.encode(definition, events)
        entries = await self.broker.publish(definition.name, data)
        self.activity.published[definition.family_name] += len(entries)
        return entries

    async def publish_as(
        self, access: Access, client: str, name: str, events: list[Any]
    ) -> tuple[str, list[Entry]]:
        """Publish for a client (`POST /streams/{name}/events`, a WebSocket's `publish`): its
        grants, its rate limit, then `publish`. Returns the topic's name as the hub spells it
        and the entries. Raises `RequestError`, a 503 when the broker cannot be reached."""
        access.require_token("publishing")
        name = self.publishable(name, access).name  # `room/007` is `room/7`
        self.limits.take_publish(client, len(events))
        started = time.perf_counter()
        try:
            entries = await self.publish(name, events)
        except BrokerUnavailable as exc:
            self.activity.broker_errors += 1
            raise RequestError(503, "broker_unavailable", str(exc), retry_after=1) from None
        self.activity.publish_latency(name, time.perf_counter() - started)
        return name, entries

    def publishable(self, name: str, access: Access | None = None) -> Topic:
        """The topic `name` if `access` (trusted code when None) may publish to it; else a
        404 for a stream it may not see, a 403 without the grant, a 405 for no topic."""
        access = access if access is not None else _TRUSTED

        def topics() -> list[str]:  # named in a refusal: those this caller may publish to
            return [
                f"{t}/<key>" if d.keyed else t
                for t, d in self.topics.items()
                if not d.producer and access.may_publish(d)
            ]

        definition = find_stream(self.registry, name, access, topics)
        access.check_publish(definition)
        if not isinstance(definition, Topic) or definition.producer is not None:
            what = "a generated stream" if definition.kind == "generated" else "fed by its producer"
            raise RequestError(
                405,
                "not_publishable",
                f"stream {name!r} is {what}; only topics accept published events "
                f"(topics: {', '.join(topics())})",
            )
        return definition

    @staticmethod
    async def encode(definition: Topic, events: Iterable[Event | Mapping[str, Any]]) -> list[str]:
        """The events' JSON as the topic's model, or a 422 naming every problem.

        A slice at a time, letting the loop serve others in between; each model is dropped
        once written, so that a batch of 50,000 never lives as 50,000 models at once.
        """
        model = definition.event_model
        encoded: list[str] = []
        errors: list[dict[str, Any]] = []
        for index, event in enumerate(events):
            if index and not index % SLICE:
                await asyncio.sleep(0)
            if not isinstance(event, model):
                problems = _problems(definition, event)
                if problems:
                    errors += [{"index": index, **problem} for problem in problems]
                    if len(errors) >= MAX_ERRORS:
                        break
                    continue
                try:
                    event = model.model_validate(dict(event))
                except ValidationError as exc:
                    errors += [
                        {
                            "index": index,
                            "field": ".".join(str(part) for part in error["loc"]),
                            "message": error["msg"],
                        }
                        for error in exc.errors(include_url=False)
                    ]
                    if len(errors) >= MAX_ERRORS:
                        break
                    continue
            if errors:
                continue  # nothing is published: no need to write the rest
            try:
                encoded.append(event.model_dump_json())
            except PydanticSerializationError as exc:  # e.g. a lone surrogate in a string
                errors.append({"index": index, "field": "", "message": str(exc)})
        if errors:
            errors = errors[:MAX_ERRORS]
            summary = "; ".join(
                f"[{e['index']}] {e['field'] or '(event)'}: {e['message']}" for e in errors[:10]
            )
            more = f" (and {len(errors) - 10} more in 'errors')" if len(errors) > 10 else ""
            raise RequestError(
                422,
                "invalid_events",
                f"invalid events for {definition.name!r} ({model.__name__}): {summary}{more}",
                errors=errors,
            )
        if not encoded:
            raise RequestError(422, "invalid_events", "no events given: send one or more")
        return encoded


# Code in the hub's process (`hub.publish()`, shared producers) is trusted: it may publish
# to every topic, whatever the authorization.
_TRUSTED = Access(None, None)


def load_auth(settings: Settings) -> Auth:
    """The hub's authorization, from its settings; the public key is read from its file."""
    public_key = None
    if settings.auth_public_key:
        try:
            with open(settings.auth_public_key, "rb") as file:
                public_key = file.read(1024 * 1024)
        except OSError as exc:
            raise AuthConfigError(
                f"--auth-public-key {settings.auth_public_key!r} cannot be read: {exc.strerror}"
            ) from None
    return Auth(
        key=settings.auth_key.encode() if settings.auth_key else None,
        public_key=public_key,
        audience=settings.auth_audience,
        issuer=settings.auth_issuer,
        leeway=settings.auth_leeway,
        public=settings.public,
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def _problems(definition: Topic, event: object) -> list[dict[str, str]]:
    """What makes `event` (not yet a model) unfit before its fields are even validated."""
    model = definition.event_model
    if not isinstance(event, dict):
        if not isinstance(event, Mapping):
            return [{"field": "", "message": f"expected a JSON object ({model.__name__})"}]
        event = dict(event)
    if _deeper_than(event, MAX_DEPTH):
        return [{"field": "", "message": f"nested deeper than {MAX_DEPTH} levels"}]
    problems = [
        {"field": field, "message": "set by the hub; leave it out"}
        for field in sorted(definition.read_only.intersection(event))
    ]
    problems += [
        {"field": field, "message": "not a field of the event"}
        for field in sorted(set(event).difference(definition.fields))
    ]
    return problems


def _deeper_than(value: dict[str, Any] | list[Any], limit: int) -> bool:
    """Whether JSON-like `value` nests containers more than `limit` deep (without recursion).

    Dicts and lists only, checked by exact type: what JSON parses into, and fast (this runs
    for every published event)."""
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        for child in item.values() if type(item) is dict else item:
            kind = type(child)
            if kind is dict or kind is list:
                if depth >= limit:
                    return True
                stack.append((cast(dict[str, Any] | list[Any], child), depth + 1))
    return False


async def publish(name: str, *events: Event | Mapping[str, Any]) -> list[str]:
    """Publish events to a topic of the hub running in this process; returns their positions.

    `await hub.publish("chat", ChatMessage(user="ana", text="hi"))`
    """
    running = Hub.current
    if running is None:
        raise RuntimeError(
            "no hub is running in this process: publish from inside `hub serve`, "
            "or start one with `async with Hub(registry):`"
        )
    try:
        entries = await running.publish(name, events)
    except RequestError as exc:
        raise ValueError(exc.message) from None
    return [entry.position for entry in entries]


class Producers:
    """Runs each shared stream's generator while it has subscribers (or always, if eager),
    publishing what it yields into its topic: once per cluster.

    A process runs a producer only while it holds the stream's lease from the broker. The
    memory broker, one process's, always grants it; with Redis the processes that want a
    producer take turns: one runs it, renewing its lease, and the others stand by, trying
    again every `broker.lease_retry` seconds, and take over when it lets go or dies.
    """

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._users: Counter[str] = Counter()
        self._producing: set[str] = set()

    def names(self) -> list[str]:
        """The shared streams whose producer runs in this process now."""
        return sorted(self._producing)

    def standing_by(self) -> list[str]:
        """The shared streams wanted here whose lease another process holds."""
        return sorted(
            n for n, t in self._tasks.items() if not t.done() and n not in self._producing
        )

    def running(self, name: str) -> bool:
        return name in self._producing

    def acquire(self, definition: Topic) -> None:
        self._users[definition.name] += 1
        task = self._tasks.get(definition.name)
        if task is None or task.done():
            self._tasks[definition.name] = asyncio.create_task(
                self._run(definition), name=f"hub producer {definition.name}"
            )

    def release(self, definition: Topic) -> None:
        self._users[definition.name] -= 1
        if self._users[definition.name] <= 0 and not definition.eager:
            del self._users[definition.name]
            task = self._tasks.pop(definition.name, None)
            if task is not None:
                task.cancel()  # the generator's finally runs, then the lease is let go

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, definition: Topic) -> None:
        """Hold the lease and produce; stand by while another process holds it."""
        name = definition.name
        while True:
            lease = await self._lease(name)
            self._producing.add(name)
            producing = asyncio.create_task(self._produce(definition))
            kept = asyncio.create_task(lease.kept())
            try:
                await asyncio.wait((producing, kept), return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._producing.discard(name)
                producing.cancel()
                kept.cancel()
                await asyncio.gather(producing, kept, return_exceptions=True)
                await lease.release()
            if producing.done() and not producing.cancelled() and not producing.result():
                return  # it ended or failed, and its subscribers here were told
            # The lease was lost (another process may run it now), or the broker was: stand
            # by again, until the lease can be had.

    async def _lease(self, name: str) -> Lease:
        broker, failures = self._hub.broker, 0
        while True:
            try:
                lease = await broker.lease(name)
            except BrokerUnavailable as exc:
                self._hub.activity.broker_errors += 1
                if not failures:
                    logger.debug("shared stream %r waits for its broker: %s", name, exc)
                failures += 1
            else:
                if lease is not None:
                    return lease
                failures = 0
            # Held elsewhere: ask again soon. Broker down: back off, up to 5 s.
            await asyncio.sleep(min(broker.lease_retry * 2 ** min(failures, 8), 5.0))

    async def _produce(self, definition: Topic) -> bool:
        """Run the generator; True if it stopped because the broker is unavailable."""
        assert definition.producer is not None
        name, model, broker = definition.name, definition.event_model, self._hub.broker
        published, family = self._hub.activity.published, definition.family_name
        try:
            async with aclosing(definition.producer()) as events:  # type: ignore[type-var]
                async for event in events:
                    if not isinstance(event, model):
                        raise TypeError(
                            f"stream {name!r} yielded {type(event).__name__}, "
                            f"expected {model.__name__}"
                        )
                    await broker.publish(name, [event.model_dump_json()])
                    published[family] += 1
        except BrokerUnavailable as exc:
            # Not the stream's fault: it runs again once the broker is back.
            self._hub.activity.broker_errors += 1
            logger.debug("shared stream %r stops until its broker is back: %s", name, exc)
            broker.interrupt(name, str(exc))
            return True
        except Exception as exc:
            logger.exception("shared stream %r failed; its subscribers are told", name)
            broker.interrupt(name, f"{type(exc).__name__}: {exc}")
        else:
            broker.interrupt(name, None)  # the producer ended: so do its subscribers' streams
        finally:
            self._producing.discard(name)  # now, before any subscriber it told can look
        return False
