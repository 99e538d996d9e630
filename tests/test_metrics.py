"""`GET /metrics`: parsed with prometheus-client's own parser, its figures checked after a known
workload, on one process and on `--workers 2` sharing Redis."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import TIMEOUT, get, together
from websockets.sync.client import connect

from hub.testing import HubServer

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: HubServer, headers: dict[str, str] | None = None) -> Samples:
    answer = httpx.get(f"{server.url}/metrics", headers=headers, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def eventually(server: HubServer, check: Callable[[Samples], bool], within: float = 15) -> Samples:
    """Scrape until `check` holds (another worker's figures arrive within a second)."""
    deadline = time.monotonic() + within
    while True:
        samples = scrape(server)
        if check(samples):
            return samples
        assert time.monotonic() < deadline, f"not within {within} s: {samples}"
        time.sleep(0.2)


class Subscriber(threading.Thread):
    """An SSE subscriber that reads `count` events of `streams`, then ends."""

    def __init__(self, server: HubServer, streams: str, count: int) -> None:
        super().__init__(daemon=True)
        self.url, self.params = server.url, {"streams": streams, "count": count}
        self.events = 0

    def run(self) -> None:
        with httpx.stream("GET", f"{self.url}/events", params=self.params, timeout=TIMEOUT) as r:
            for line in r.iter_lines():
                if line.startswith("event: ") and line != "event: hub.end":
                    self.events += 1


def workload(server: HubServer, ready: Callable[[], bool]) -> list[Subscriber]:
    """Two subscribers of five chat events; the five published in two requests (2 + 3); an
    echo of three events; one refused request."""
    subscribers = [Subscriber(server, "chat", 5) for _ in range(2)]
    for subscriber in subscribers:
        subscriber.start()
    deadline = time.monotonic() + 15
    while not ready():  # both are reading the topic live before anything is published
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for texts in (["a", "b"], ["c", "d", "e"]):
        events = [{"user": "ana", "text": t} for t in texts]
        answer = httpx.post(f"{server.url}/streams/chat/events", json=events, timeout=TIMEOUT)
        assert answer.status_code == 201
    for subscriber in subscribers:
        subscriber.join(15)
        assert subscriber.events == 5
    echo = get(server, "/events", params={"streams": "echo", "count": 3, "interval": 0})
    assert echo.text.count("event: echo") == 3
    assert get(server, "/events?streams=nope").status_code == 404
    return subscribers


def expected(samples: Samples) -> bool:
    return (
        value(samples, "hub_events_published_total", stream="chat") == 5
        and value(samples, "hub_events_delivered_total", stream="chat") == 10
        and value(samples, "hub_events_delivered_total", stream="echo") == 3
        and value(samples, "hub_refused_total", code="unknown_stream") == 1
        and value(samples, "hub_publish_seconds_count", stream="chat") == 2
    )


def test_the_figures_of_a_known_workload() -> None:
    with HubServer() as server:
        workload(server, lambda: get(server, "/health").json()["open_streams"] == 2)
        samples = scrape(server)
        assert expected(samples), samples
        assert value(samples, "hub_sent_bytes_total", transport="sse") > 0
        assert value(samples, "hub_connections", transport="sse") == 0
        assert value(samples, "hub_cut_off_total", reason="overflow") == 0
        assert value(samples, "hub_broker_errors_total") == 0
        buckets = [v for (name, _), v in samples.items() if name == "hub_publish_seconds_bucket"]
        assert buckets and max(buckets) == 2
        # Open connections, by transport; a WebSocket's publishes count as any other.
        url = server.url.replace("http://", "ws://") + "/ws?streams=room/metrics"
        with connect(url) as ws, httpx.stream("GET", f"{server.url}/events?streams=chat") as sse:
            assert sse.status_code == 200
            json.loads(ws.recv(timeout=10))
            ws.send(json.dumps({"publish": "room/metrics", "data": {"user": "a", "text": "b"}}))
            ws.recv(timeout=10), ws.recv(timeout=10)
            samples = scrape(server)
            assert value(samples, "hub_connections", transport="sse") == 1
            assert value(samples, "hub_connections", transport="ws") == 1
            assert value(samples, "hub_subscriptions") == 2
            assert value(samples, "hub_events_published_total", stream="room") == 1
            assert value(samples, "hub_events_delivered_total", stream="room") == 1
            assert value(samples, "hub_sent_bytes_total", transport="ws") > 0
        # Labels stay bounded: a family, never a key.
        assert not [key for key in samples if any("metrics" in v for _, v in key[1])]


def test_a_token_guards_it_and_it_can_be_turned_off() -> None:
    guarded, off = HubServer(args=["--metrics-token", "s3cret"]), HubServer(args=["--no-metrics"])
    with together(guarded, off):
        refused = httpx.get(f"{guarded.url}/metrics", timeout=TIMEOUT)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        wrong = httpx.get(f"{guarded.url}/metrics", headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 401
        assert "hub_subscriptions" in {
            k[0] for k in scrape(guarded, {"Authorization": "Bearer s3cret"})
        }
        assert get(off, "/metrics").status_code == 404


def test_every_workers_figures_are_counted(redis_server: str) -> None:
    broker = f"{redis_server}?prefix=metrics-{uuid.uuid4().hex[:8]}:"
    with HubServer(args=["--workers", "2", "--broker", broker]) as server:
        pids: set[int] = set()
        deadline = time.monotonic() + 15
        while len(pids) < 2:  # both workers answer (each connection goes to either)
            assert time.monotonic() < deadline
            with httpx.Client(timeout=TIMEOUT) as client:
                pids.add(client.get(f"{server.url}/health").json()["pid"])

        def both_subscribed() -> bool:
            return value(scrape(server), "hub_subscriptions") == 2

        workload(server, both_subscribed)
        eventually(server, expected)
        # More rounds of handing figures over (requests to either worker, counted once
        # each), and still nothing is counted twice.
        for _ in range(4):
            assert get(server, "/nope").status_code == 404
        eventually(server, lambda s: value(s, "hub_refused_total", code="not_found") == 4)
        assert expected(scrape(server))


@pytest.mark.parametrize("path", ["/metrics"])
def test_it_is_documented(hub_server: HubServer, path: str) -> None:
    document: dict[str, Any] = get(hub_server, "/openapi.json").json()
    assert path in document["paths"]
