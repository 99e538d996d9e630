"""Brokers, chosen by URL: `memory://` (embedded, the default) or, later, `redis://`."""

from __future__ import annotations

from urllib.parse import urlsplit

from .base import Broker, BrokerSubscription, Entry, Gap, Interrupted, Overflow, TopicConfig

__all__ = [
    "Broker",
    "BrokerSubscription",
    "Entry",
    "Gap",
    "Interrupted",
    "Overflow",
    "TopicConfig",
    "broker_from_url",
]

SCHEMES = ("memory",)


def broker_from_url(url: str) -> Broker:
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from .memory import MemoryBroker

        return MemoryBroker(url)
    raise ValueError(
        f"unsupported broker URL {url!r}: use one of {', '.join(s + '://' for s in SCHEMES)}"
    )
