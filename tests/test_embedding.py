"""Hub streams inside a FastAPI app of one's own: the example app `hub.examples.embedded`,
under a real uvicorn, serving a hub stream behind its own dependency through sse-starlette,
with the hub's whole API mounted under `/hub`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import HTTPException
from httpx_sse import connect_sse
from support import TIMEOUT
from websockets.sync.client import connect

import hub
from hub import Hub, Registry
from hub.examples import embedded
from hub.testing import HubServer

README = Path(__file__).parent.parent / "README.md"


@pytest.fixture(scope="module")
def app_server() -> Iterator[HubServer]:
    server = HubServer()
    server.command = [
        sys.executable,
        "-m",
        "uvicorn",
        "hub.examples.embedded:app",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ]
    with server:
        yield server


def own_events(
    server: HubServer, key: str, limit: int, last_event_id: str | None = None
) -> list[tuple[str, str | None, str]]:
    headers = {"X-API-Key": key}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    received: list[tuple[str, str | None, str]] = []
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        with connect_sse(client, "GET", "/me/events", headers=headers) as source:
            assert source.response.status_code == 200
            assert source.response.headers["content-type"].startswith("text/event-stream")
            for sse in source.iter_sse():
                received.append((sse.event, sse.id or None, sse.data))
                if len(received) == limit:
                    break
    return received


def test_the_app_serves_a_hub_stream_behind_its_own_dependency(app_server: HubServer) -> None:
    refused = httpx.get(f"{app_server.url}/me/events", timeout=TIMEOUT)
    assert refused.status_code == 422  # no X-API-Key: FastAPI's own validation
    wrong = httpx.get(f"{app_server.url}/me/events", headers={"X-API-Key": "x"}, timeout=TIMEOUT)
    assert wrong.status_code == 401 and wrong.json() == {"detail": "unknown API key"}

    def post(text: str) -> None:  # to ana's room, through the mounted hub API
        answer = httpx.post(
            f"{app_server.url}/hub/streams/room/ana/events",
            json={"user": "bob", "text": text},
            timeout=TIMEOUT,
        )
        assert answer.status_code == 201, answer.text

    post("before")  # a room with history is kept while nobody reads it
    start, greeting = own_events(app_server, "key-ana", 2)
    # The starting cursor alone, then the greeting: the hub's ids through sse-starlette.
    assert start[0] == "message" and start[2] == ""
    assert start[1] is not None and start[1].startswith("echo:-,room/ana:")
    assert greeting[0] == "echo" and json.loads(greeting[2])["message"] == "hello ana"
    assert greeting[1] is not None and greeting[1].startswith("echo:0,room/ana:")

    # Ana's room resumes from her cursor exactly.
    post("one")
    post("two")
    resumed = own_events(app_server, "key-ana", 4, last_event_id=greeting[1])
    room = [json.loads(data)["text"] for event, _, data in resumed if event == "room/ana"]
    assert room == ["one", "two"]
    assert resumed[-1][1] is not None and "room/ana:" in resumed[-1][1]


def test_the_hub_api_works_under_the_mount(app_server: HubServer) -> None:
    catalog = httpx.get(f"{app_server.url}/hub/streams", timeout=TIMEOUT)
    assert catalog.status_code == 200
    assert "echo" in [s["name"] for s in catalog.json()["streams"]]
    events = httpx.get(
        f"{app_server.url}/hub/events",
        params={"streams": "echo", "count": 1, "interval": 0},
        timeout=TIMEOUT,
    )
    assert events.status_code == 200 and "event: echo" in events.text
    unknown = httpx.get(f"{app_server.url}/hub/events?streams=nope", timeout=TIMEOUT)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_stream"
    url = app_server.url.replace("http://", "ws://") + "/hub/ws?streams=echo&count=1&interval=0"
    with connect(url) as ws:
        messages = [json.loads(ws.recv(timeout=10)) for _ in range(2)]
    assert messages[0] == {"id": "echo:-"} and messages[1]["event"] == "echo"
    # The live page and its files, at the mount's own URLs.
    page = httpx.get(f"{app_server.url}/hub/", timeout=TIMEOUT)
    assert page.status_code == 200 and 'data-root="/hub"' in page.text
    assert '<script src="/hub/page/page.js"' in page.text
    script = httpx.get(f"{app_server.url}/hub/page/page.js", timeout=TIMEOUT)
    assert script.status_code == 200 and "EventSource" in script.text


@pytest.mark.anyio
async def test_subscribe_refuses_before_anything_opens_as_an_http_exception() -> None:
    async with Hub(Registry.discover()) as running:
        with pytest.raises(HTTPException) as raised:
            hub.subscribe("echo,nope", hub=running)
        assert raised.value.status_code == 404
        assert raised.value.detail["code"] == "unknown_stream"
        with pytest.raises(HTTPException) as raised:
            hub.subscribe(["echo"], {"interval": "soon"})
        assert raised.value.status_code == 422
        events = hub.subscribe(["echo"], {"message": "in", "count": 2, "interval": 0})
        received = [event async for event in events]
        assert [e.event for e in received] == [None, "echo", "echo", "hub.end"]
        assert [e.id for e in received] == ["echo:-", "echo:0", "echo:1", None]
        assert running.activity.subscriptions == 0  # closed with its generator
    with pytest.raises(RuntimeError, match="no hub is running"):
        hub.subscribe("echo")


def test_the_readme_shows_the_example_app_as_it_is() -> None:
    source = Path(embedded.__file__).read_text()
    body = source[source.index("from collections.abc") :]
    assert body.strip() in README.read_text()
