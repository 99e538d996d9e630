"""`GET /metrics`: the hub's figures in the Prometheus text format, through prometheus-client.

Counting costs the hot path nothing but additions: the hub keeps plain numbers as it goes
(`hub.merge.Activity`, once per batch or per connection; `Broker.delivered`, once per publish),
and this module hands them to prometheus-client as deltas when they are read: at each scrape,
and, with several workers, once a second in each.

Under `hub serve --workers N` every worker's figures are counted: prometheus-client's
multiprocess mode, in a directory `hub serve` makes for the run (`PROMETHEUS_MULTIPROC_DIR`,
yours if you set it), which whichever worker is scraped reads whole. Gauges sum the live
workers; counters keep a worker's counts after it exits. Another worker's figures are then
up to a second old.

Labels stay bounded: a stream family (a keyed family's topics are counted as the family), a
transport, a reason, an error code; never a key, a client or a path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import RequestError

if TYPE_CHECKING:
    from .runtime import Hub

__all__ = ["MULTIPROCESS_DIR", "Metrics", "forget_process"]

# Set (by `hub serve --workers`, or by you) before prometheus-client is first imported.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
# How often a worker hands its figures over, when several share the directory.
SYNC_EVERY = 1.0
TRANSPORTS = ("sse", "ws")
CUT_OFF_REASONS = ("overflow", "send_timeout", "expired")
# Publish latencies kept, at most, until the metrics are made.
_PENDING = 10_000
# Publish latency, in seconds: from half a millisecond to a broker in trouble.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """One hub's metrics: created by the app when metrics are on (`--no-metrics` turns them
    off), read by `GET /metrics`."""

    def __init__(self, hub: Hub, token: str = "") -> None:
        self.hub = hub
        self.token = token
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_DIR))
        self.registry: Any = None
        self._made = False
        self._seen: dict[tuple[str, str], float] = {}
        self._task: asyncio.Task[None] | None = None
        self._pending: list[tuple[str, float]] = []  # publish latencies before they are made
        hub.activity.observe_publish = self._observe

    def _make(self) -> None:
        """The metrics, made on first use: prometheus-client is imported then, not while the
        hub starts (it takes a tenth of a second of CPU)."""
        if self._made:
            return
        self._made = True
        hub = self.hub
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            disable_created_metrics,
        )

        disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series
        # Our own registry: several hubs in one process (tests) each have theirs. With
        # several workers the figures are read from the shared directory instead.
        self.registry = None if self.multiprocess else CollectorRegistry(auto_describe=True)
        live: dict[str, Any] = {"multiprocess_mode": "livesum"} if self.multiprocess else {}
        registry = self.registry
        self.connections = Gauge(
            "hub_connections",
            "Open subscriber connections, by transport",
            ["transport"],
            registry=registry,
            **live,
        )
        self.subscriptions = Gauge(
            "hub_subscriptions", "Subscriptions being served", registry=registry, **live
        )
        self.open_streams = Gauge(
            "hub_open_streams",
            "Stream sources open, over all subscriptions",
            registry=registry,
            **live,
        )
        self.producers = Gauge(
            "hub_shared_producers",
            "Shared streams whose producer runs here",
            registry=registry,
            **live,
        )
        self.published = Counter(
            "hub_events_published",
            "Events published, by stream family",
            ["stream"],
            registry=registry,
        )
        self.delivered = Counter(
            "hub_events_delivered",
            "Events handed to subscribers, by stream family (one per subscriber)",
            ["stream"],
            registry=registry,
        )
        self.sent = Counter(
            "hub_sent_bytes", "Bytes of events sent, by transport", ["transport"], registry=registry
        )
        self.cut_off = Counter(
            "hub_cut_off",
            "Subscribers cut off, by reason (overflow, send_timeout, expired)",
            ["reason"],
            registry=registry,
        )
        self.refused = Counter(
            "hub_refused", "Requests refused, by error code", ["code"], registry=registry
        )
        self.broker_errors = Counter(
            "hub_broker_errors",
            "Publishes, subscriptions and producers that found the broker unavailable",
            registry=registry,
        )
        self.latency = Histogram(
            "hub_publish_seconds",
            "Time to validate and publish a request's events, by stream family",
            ["stream"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # Every series a dashboard looks for exists from the start, at 0.
        for transport in TRANSPORTS:
            self.connections.labels(transport)
            self.sent.labels(transport)
        for reason in CUT_OFF_REASONS:
            self.cut_off.labels(reason)
        for definition in hub.registry:
            self.delivered.labels(definition.name)
            if definition.kind == "topic":
                self.published.labels(definition.name)
        pending, self._pending = self._pending, []
        for family, seconds in pending:
            self.latency.labels(family).observe(seconds)

    def _observe(self, family: str, seconds: float) -> None:
        if not self._made:
            # Kept until the metrics are made (the first scrape), rather than importing
            # prometheus-client in the middle of a publish; a process nobody scrapes makes
            # them after a while, to keep this bounded.
            self._pending.append((family, seconds))
            if len(self._pending) >= _PENDING:
                self._make()  # replays them all, this one too
            return
        self.latency.labels(family).observe(seconds)

    def start(self) -> None:
        """With several workers, hand this one's figures over every second (prometheus-
        client is imported off the loop first)."""
        if self.multiprocess and self._task is None:
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        await asyncio.to_thread(importlib.import_module, "prometheus_client")
        self._make()
        await self._sync_every(SYNC_EVERY)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.multiprocess:
            self.sync()  # this worker's last figures count too

    async def _sync_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            self.sync()

    def sync(self) -> None:
        """Hand the hub's figures to prometheus-client: counters by what grew since last."""
        self._make()
        hub = self.hub
        activity = hub.activity
        for transport in TRANSPORTS:
            self.connections.labels(transport).set(activity.connections[transport])
        self.subscriptions.set(activity.subscriptions)
        self.open_streams.set(activity.open_streams)
        self.producers.set(len(hub.producers.names()))
        self._grow(self.published, "published", activity.published)
        self._grow(self.delivered, "generated", activity.delivered)
        self._grow(self.delivered, "topics", hub.broker.delivered)
        self._grow(self.sent, "sent", {"sse": activity.sse_bytes, "ws": activity.ws_bytes})
        self._grow(self.cut_off, "cut_off", activity.cut_off)
        self._grow(self.refused, "refused", activity.refused)
        self._grow(self.broker_errors, "broker_errors", {"": activity.broker_errors})

    def _grow(self, counter: Any, what: str, totals: Mapping[str, float]) -> None:
        for label, total in list(totals.items()):
            key = (what, label)
            grown = total - self._seen.get(key, 0)
            if grown > 0:
                (counter.labels(label) if label else counter).inc(grown)
                self._seen[key] = total

    def check(self, headers: Mapping[str, str]) -> None:
        """A 401 unless the request carries the metrics token (when one is set)."""
        if not self.token:
            return
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), self.token):
            return
        raise RequestError(
            401,
            "unauthorized",
            "/metrics needs the metrics token: send it as 'Authorization: Bearer <token>' "
            "(--metrics-token)",
            challenge='Bearer realm="hub metrics"',
        )

    def exposition(self) -> tuple[bytes, str]:
        """The text a scrape gets, and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        self.sync()
        if self.registry is not None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST


def forget_process(pid: int) -> None:
    """A worker exited: its gauges stop counting (its counters stay)."""
    if os.environ.get(MULTIPROCESS_DIR):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
