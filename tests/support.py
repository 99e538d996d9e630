"""Client helpers shared by the end-to-end tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent, connect_sse

from hub.testing import HubServer

TIMEOUT = httpx.Timeout(15.0)


def read_events(
    server: HubServer,
    params: dict[str, Any] | str,
    limit: int | None = None,
    headers: dict[str, str] | None = None,
) -> list[ServerSentEvent]:
    """The events of one subscription: the first `limit`, or all until the response ends
    (`hub.end`, which is left out: tests/test_ending.py reads it)."""
    received: list[ServerSentEvent] = []
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        with connect_sse(
            client, "GET", "/events", params=params, headers=dict(headers or {})
        ) as source:
            assert source.response.status_code == 200, source.response.read()
            for sse in source.iter_sse():
                if not sse.data:  # the retry hint alone
                    continue
                if sse.event == "hub.end":  # every stream has ended: nothing follows
                    break
                received.append(sse)
                if limit is not None and len(received) == limit:
                    break
    return received


def data_of(source: EventSource, name: str) -> Iterator[dict[str, Any]]:
    """The data of each event named `name` on an open SSE response, as it arrives."""
    for sse in source.iter_sse():
        if sse.event == name:
            yield json.loads(sse.data)


def positions(cursor: str) -> dict[str, str]:
    return dict(part.split(":", 1) for part in cursor.split(","))


def room() -> str:
    """A keyed chat room of its own, for a test on a shared hub."""
    return f"room/{uuid.uuid4().hex[:12]}"


def publish_chat(server: HubServer, name: str, *texts: str) -> list[str]:
    """Publish a chat message per text to `name` (ana's); the ids a subscriber of it alone
    sees."""
    events = [{"user": "ana", "text": text} for text in texts]
    answer = httpx.post(f"{server.url}/streams/{name}/events", json=events, timeout=TIMEOUT)
    assert answer.status_code == 201, answer.text
    ids: list[str] = answer.json()["ids"]
    return ids


def get(server: HubServer, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(server.url + path, timeout=TIMEOUT, **kwargs)


class Reports:
    """A loopback listener that receives the `lifecycle` test stream's open/close reports."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(15)
        self.port = self.listener.getsockname()[1]

    def next(self) -> str:
        connection, _ = self.listener.accept()
        with connection:
            connection.settimeout(5)
            return connection.makefile().readline().strip()

    def close(self) -> None:
        self.listener.close()


def run_hub(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The `hub` command, run to its end: `run_hub("streams", "--json")`."""
    return subprocess.run(
        [sys.executable, "-m", "hub", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def free_port() -> int:
    """A loopback port free now, for a hub that must come back on the same one."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def together(*servers: HubServer) -> Iterator[tuple[HubServer, ...]]:
    """Start hubs at the same time and stop them all at the end, at the same time too: a start
    is mostly a new interpreter importing, and a stop a wait, which two cores do at once."""
    with ThreadPoolExecutor(len(servers)) as pool:
        starts = [pool.submit(server.start) for server in servers]
        up = [
            server for server, start in zip(servers, starts, strict=True) if not start.exception()
        ]
        try:
            for start in starts:
                start.result()  # the first that failed to start (it stopped itself)
            yield servers
        finally:
            for stopped in [pool.submit(server.stop) for server in up]:
                stopped.result()
