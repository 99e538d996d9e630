"""Streams for the authorization tests: private and public topics and generated streams, and
streams that serve the caller (`Principal`)."""

import asyncio
from collections.abc import AsyncIterator

from hub import Event, Principal, stream, topic


class Note(Event):
    text: str


room = topic("room", Note, description="A private topic.")
news = topic("news", Note, description="Public in code.", public=True)
acme_orders = topic("acme_orders", Note, description="Matched by acme_*.")
acme_bills = topic("acme_bills", Note, description="Matched by acme_*.")


@stream("status")
async def status(interval: float = 0.05) -> AsyncIterator[Note]:
    """Public by flag (--public status)."""
    while True:
        yield Note(text="ok")
        await asyncio.sleep(interval)


@stream("ticker")
async def ticker(interval: float = 0.05) -> AsyncIterator[Note]:
    """A private generated stream."""
    n = 0
    while True:
        n += 1
        yield Note(text=str(n))
        await asyncio.sleep(interval)


class Caller(Event):
    sub: str | None
    email: str | None = None


@stream("whoami", public=True)
async def whoami(caller: Principal | None) -> AsyncIterator[Caller]:
    """Who the hub says is calling: anyone may ask, the answer is None without a token."""
    while True:
        if caller is None:
            yield Caller(sub=None)
        else:
            yield Caller(sub=caller.sub, email=caller.claims.get("email"))
        await asyncio.sleep(0.05)


# What a real application keeps per user; the stream serves the caller's own.
NOTIFICATIONS = {
    "ana": ["your order shipped", "a new follower"],
    "bob": ["your invoice is ready"],
}


@stream("inbox", public=True)
async def inbox(me: Principal) -> AsyncIterator[Note]:
    """The caller's own notifications: refused without a token, public to anyone with one."""
    for text in NOTIFICATIONS.get(me.sub or "", []):
        yield Note(text=text)


@stream("pulse", shared=True, eager=True, history=10)
async def pulse() -> AsyncIterator[Note]:
    """A private shared stream, running from the start."""
    while True:
        yield Note(text="beat")
        await asyncio.sleep(0.5)
