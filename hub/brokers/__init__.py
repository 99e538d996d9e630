"""Brokers, chosen by URL: `memory://` (embedded, the default) or `redis://` (Redis Streams)."""

from __future__ import annotations

from urllib.parse import urlsplit

from .base import (
    FRAMES_AT_ONCE,
    SLICE,
    Broker,
    BrokerSubscription,
    BrokerUnavailable,
    Entry,
    Gap,
    Interrupted,
    Lease,
    Overflow,
    TopicConfig,
)

__all__ = [
    "FRAMES_AT_ONCE",
    "SLICE",
    "Broker",
    "BrokerSubscription",
    "BrokerUnavailable",
    "Entry",
    "Gap",
    "Interrupted",
    "Lease",
    "Overflow",
    "TopicConfig",
    "broker_from_url",
]

SCHEMES = ("memory", "redis", "rediss")


def broker_from_url(url: str) -> Broker:
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from .memory import MemoryBroker

        return MemoryBroker(url)
    if scheme in ("redis", "rediss"):
        from .redis import RedisBroker

        return RedisBroker(url)
    raise ValueError(
        f"unsupported broker URL {url!r}: use one of {', '.join(s + '://' for s in SCHEMES)}"
    )
