"""hub.testing, the helpers plugin authors use: its parser, collect, and the server helper."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hub import Event, stream
from hub.subscription import RequestError
from hub.testing import HubServer, ReceivedEvent, SSEParser, collect, parse_events, serve


class Ping(Event):
    n: int


@stream("finite")
async def finite(limit: int = 2) -> AsyncIterator[Ping]:
    for n in range(limit):
        yield Ping(n=n)


def test_parser_reassembles_frames_split_anywhere() -> None:
    raw = "retry: 10\n\n: hi\nid: a:1\nevent: e\ndata: ✓ one\ndata: two\r\n\r\ndata: x\r\r".encode()
    whole = parse_events(raw)
    assert whole == [
        ReceivedEvent("e", "✓ one\ntwo", "a:1"),
        ReceivedEvent("message", "x", "a:1"),
    ]
    for size in (1, 2, 3, 5, 7):
        parser = SSEParser()
        pieces = [raw[i : i + size] for i in range(0, len(raw), size)]
        assert [event for piece in pieces for event in parser.feed(piece)] == whole
        assert parser.retry == 10 and parser.comments == ["hi"]


def test_collect_ends_early_when_every_stream_ends() -> None:
    events = collect(finite, 10, params={"limit": 3})
    assert [(e.id, e.json()) for e in events] == [
        ("finite:0", {"n": 0}),
        ("finite:1", {"n": 1}),
        ("finite:2", {"n": 2}),
    ]


def test_collect_raises_what_the_hub_would_answer() -> None:
    with pytest.raises(RequestError) as refused:
        collect(finite, 1, params={"limit": "many"})
    assert refused.value.status == 422
    assert refused.value.body()["error"]["errors"][0]["parameter"] == "limit"


def test_collect_times_out_with_what_it_got() -> None:
    with pytest.raises(TimeoutError, match="1 of 2 events"):
        collect("echo", 2, params={"interval": 30}, timeout=0.5)


def test_serve_runs_a_real_hub_with_a_plugin(tmp_path: Path) -> None:
    plugin = tmp_path / "plug.py"
    plugin.write_text(
        "from collections.abc import AsyncIterator\n"
        "from hub import Event, stream\n"
        "class P(Event):\n    n: int\n"
        "@stream('plug')\n"
        "async def plug() -> AsyncIterator[P]:\n    yield P(n=7)\n"
    )
    with serve(str(plugin)) as hub:
        body = httpx.get(hub.url + "/events?streams=plug", timeout=10).text
        assert parse_events(body) == [
            ReceivedEvent("plug", '{"n":7}', "plug:0"),
            ReceivedEvent("hub.end", '{"streams":["plug"]}', "plug:0"),  # the id carried over
        ]
    assert hub.stopped_gracefully


def test_serve_reports_a_hub_that_cannot_start(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="no such file"):
        HubServer(str(tmp_path / "missing.py")).start()
