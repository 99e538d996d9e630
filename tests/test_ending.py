"""Regression tests for issue 13: a subscription that is over says so.

Before, a response whose streams had all ended (`count`, a generator that returned or raised)
just stopped, like a dropped connection: an `EventSource` with `count` reconnected for ever,
`count=0` was accepted and ended before its first event, and `hub.testing.collect` passed on a
stream that failed. Now the last frame is `hub.end` (no id, `{"streams": [names]}`), except
where a reconnect is the point (a broker outage); `count=0` is a 422; `collect` raises
`StreamError`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support import get, publish_chat, room
from test_websocket import messages_until_closed, ws_url
from websockets.sync.client import connect

import hub
from hub import Hub, Registry
from hub.brokers import BrokerUnavailable
from hub.brokers.memory import MemoryBroker
from hub.events import control_body
from hub.merge import END
from hub.testing import HubServer, StreamError, acollect, collect, parse_events, serve
from streams.chat import chat

PLUGINS = Path(__file__).parent / "plugins"
FAILING = str(PLUGINS / "failing.py")


def end_frame(*names: str) -> str:
    return (
        f'event: hub.end\ndata: {{"streams":{json.dumps(list(names), separators=(",", ":"))}}}\n\n'
    )


def body(server: HubServer, query: str) -> str:
    response = get(server, "/events?" + query)
    assert response.status_code == 200, response.text
    return response.text


# --- hub.end over SSE --------------------------------------------------------------------------


def test_count_ends_the_response_with_hub_end(hub_server: HubServer) -> None:
    text = body(hub_server, "streams=echo,reverse_echo&count=2&interval=0")
    assert text.endswith("\n\n" + end_frame("echo", "reverse_echo"))  # no id: line before it
    events = parse_events(text)
    assert [e.event for e in events].count("hub.end") == 1
    assert sorted(e.event for e in events[:-1]) == ["echo"] * 2 + ["reverse_echo"] * 2


def test_a_generator_that_returns_ends_with_hub_end(hub_server: HubServer) -> None:
    text = body(hub_server, "streams=steps&n=2")
    assert text.endswith('event: steps\ndata: {"n":1}\n\n' + end_frame("steps"))


def test_a_generator_that_raises_ends_with_hub_error_then_hub_end(hub_server: HubServer) -> None:
    text = body(hub_server, "streams=failing,steps&fail_after=1&steps.n=3")
    events = [(e.event, e.json()) for e in parse_events(text)]
    assert events[-1] == ("hub.end", {"streams": ["failing", "steps"]})
    assert ("hub.error", {"stream": "failing", "error": "RuntimeError: boom after 1"}) in events
    assert [name for name, _ in events].count("steps") == 3


def test_the_end_marker_is_the_end_event() -> None:
    assert control_body("end", streams=["a"]).startswith(END)


@pytest.mark.anyio
async def test_a_broker_outage_ends_without_hub_end() -> None:
    # The response ends so that the client reconnects and resumes: no hub.end.
    async def outage(*args: Any) -> Any:
        raise BrokerUnavailable("the broker is down")

    registry = Registry()
    registry.add(chat)
    async with Hub(registry, broker=MemoryBroker(epoch="e1")) as running:
        # Without a cursor, the outage is found before the first chunk (the live position).
        running.broker.last_position = outage  # type: ignore[method-assign]
        received = await acollect("chat", 5, hub=running, control=True)
        assert [e.event for e in received] == ["hub.error"]
        # With one, the topic's own source finds it as it subscribes.
        running.broker.subscribe = outage  # type: ignore[method-assign]
        received = await acollect("chat", 5, hub=running, control=True, last_event_id="chat:e1.0")
        assert [e.event for e in received] == ["hub.error"]


# --- the other ways in -------------------------------------------------------------------------


def test_a_websocket_gets_hub_end_then_close_1000(hub_server: HubServer) -> None:
    lobby = room()
    ids = publish_chat(hub_server, lobby, "a", "b", "c")
    with connect(ws_url(hub_server, f"streams={lobby}&last_event_id={ids[0]}&count=2")) as ws:
        received = messages_until_closed(ws)
        assert ws.close_code == 1000
    assert [m.get("event") for m in received] == [None, lobby, lobby, "hub.end"]
    assert received[-1] == {"event": "hub.end", "data": {"streams": [lobby]}}


@pytest.mark.anyio
async def test_subscribe_yields_hub_end_as_the_last_event() -> None:
    async with Hub(Registry.discover()) as running:
        events = hub.subscribe(["echo"], {"count": 1, "interval": 0}, hub=running)
        received = [event async for event in events]
    assert [(e.event, e.id) for e in received] == [
        (None, "echo:-"),
        ("echo", "echo:0"),
        ("hub.end", None),
    ]
    assert json.loads(received[-1].data) == {"streams": ["echo"]}


# --- count=0 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["streams=echo&count=0", "streams=echo,counter&echo.count=0"])
def test_count_zero_is_refused(hub_server: HubServer, query: str) -> None:
    response = get(hub_server, "/events?" + query)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_parameters"
    assert [(e["stream"], e["parameter"]) for e in error["errors"]] == [("echo", "count")]
    assert "1 or more" in error["message"]


# --- hub.testing -------------------------------------------------------------------------------


def test_collect_raises_for_a_stream_that_fails() -> None:
    with pytest.raises(StreamError, match="'failing' failed: RuntimeError: boom after 2") as failed:
        collect("failing", 5, plugins=[FAILING])
    assert (failed.value.stream, failed.value.error) == ("failing", "RuntimeError: boom after 2")
    assert [e.json() for e in failed.value.events] == [{"n": 0}, {"n": 1}]
    # The failure is past the events asked for: nothing to raise.
    assert [e.json() for e in collect("failing", 2, plugins=[FAILING])] == [{"n": 0}, {"n": 1}]


def test_collect_with_control_returns_the_control_events() -> None:
    events = collect("failing", 5, plugins=[FAILING], control=True)
    assert [e.event for e in events] == ["failing", "failing", "hub.error", "hub.end"]
    assert events[2].json() == {"stream": "failing", "error": "RuntimeError: boom after 2"}
    assert events[3].json() == {"streams": ["failing"]}


def test_collect_leaves_hub_end_out_by_default() -> None:
    params = {"count": 2, "interval": 0}
    assert [e.event for e in collect("echo", 5, params=params)] == ["echo", "echo"]
    with_control = collect("echo", 5, params=params, control=True)
    assert [e.event for e in with_control] == ["echo", "echo", "hub.end"]


def test_serve_finds_a_relative_plugin_beside_the_calling_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # not where the plugin is
    with serve("plugins/finite.py") as server:
        assert body(server, "streams=steps&n=1").endswith(end_frame("steps"))
    assert str(PLUGINS / "finite.py") in server.command


def test_serve_names_every_place_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as missing:
        serve("plugins/missing.py")
    assert str(tmp_path / "plugins" / "missing.py") in str(missing.value)
    assert str(PLUGINS / "missing.py") in str(missing.value)
