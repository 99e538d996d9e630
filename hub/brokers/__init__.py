"""Brokers, chosen by URL: `memory://` (embedded, the default) or `redis://` (Redis Streams)."""

from __future__ import annotations

from urllib.parse import urlsplit

from .base import (
    FRAMES_AT_ONCE,
    IDLE_TTL,
    MAX_TOPICS,
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
    "IDLE_TTL",
    "MAX_TOPICS",
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


def broker_from_url(
    url: str, *, max_topics: int = MAX_TOPICS, idle_ttl: float = IDLE_TTL
) -> Broker:
    """The broker of `url`. A memory broker holds `max_topics` keyed topics at most; a Redis
    broker lets an idle keyed topic without `max_age` expire after `idle_ttl` seconds."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from .memory import MemoryBroker

        return MemoryBroker(url, max_topics=max_topics)
    if scheme in ("redis", "rediss"):
        from .redis import RedisBroker

        return RedisBroker(url, idle_ttl=idle_ttl)
    raise ValueError(
        f"unsupported broker URL {url!r}: use one of {', '.join(s + '://' for s in SCHEMES)}"
    )
