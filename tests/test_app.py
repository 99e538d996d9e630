"""The hub end to end: a real `hub serve` on a loopback port, real clients (httpx-sse, curl)."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse
from support import TIMEOUT, Reports, get, positions, read_events

from hub.merge import BATCH
from hub.testing import HubServer

# --- the merged stream ---------------------------------------------------------------------


def test_streams_interleave_with_json_payloads(hub_server: HubServer) -> None:
    events = read_events(
        hub_server, {"streams": "echo,reverse_echo", "message": "hello", "interval": 0.05}, 12
    )
    by_stream = Counter(e.event for e in events)
    assert set(by_stream) == {"echo", "reverse_echo"}
    assert min(by_stream.values()) >= 4
    for event in events:
        payload = json.loads(event.data)
        assert set(payload) == {"message", "created_at"}
        assert payload["message"] == ("hello" if event.event == "echo" else "olleh")
        assert payload["created_at"].endswith("Z")
        datetime.fromisoformat(payload["created_at"])


def test_ids_are_unique_cursors_moving_one_stream_at_a_time(hub_server: HubServer) -> None:
    events = read_events(hub_server, {"streams": "reverse_echo,echo", "interval": 0.02}, 20)
    ids = [e.id for e in events]
    assert len(set(ids)) == len(ids)
    previous = {"echo": "-", "reverse_echo": "-"}
    for event in events:
        assert list(positions(event.id)) == ["echo", "reverse_echo"]  # sorted, all selected
        current = positions(event.id)
        expected = 0 if previous[event.event] == "-" else int(previous[event.event]) + 1
        assert current[event.event] == str(expected)
        other = "echo" if event.event == "reverse_echo" else "reverse_echo"
        assert current[other] == previous[other]
        previous = current


def test_a_stream_that_never_sleeps_does_not_starve_the_others(hub_server: HubServer) -> None:
    events = read_events(hub_server, {"streams": "echo,reverse_echo,counter", "interval": 0}, 6000)
    share = Counter(e.event for e in events)
    assert set(share) == {"echo", "reverse_echo", "counter"}
    # Streams take turns a batch at a time: over many batches each gets about a third.
    assert min(share.values()) >= 1500, share
    runs = [len(list(group)) for _, group in itertools.groupby(e.event for e in events)]
    assert max(runs) <= BATCH, max(runs)  # no stream holds the others back for long


def test_count_ends_the_response_after_n_events_of_each_stream(hub_server: HubServer) -> None:
    events = read_events(hub_server, {"streams": "echo,reverse_echo", "interval": 0, "count": 3})
    assert Counter(e.event for e in events) == {"echo": 3, "reverse_echo": 3}
    scoped = read_events(
        hub_server,
        {"streams": "echo,reverse_echo", "interval": 0, "echo.count": 1, "reverse_echo.count": 4},
    )
    assert Counter(e.event for e in scoped) == {"echo": 1, "reverse_echo": 4}


def test_scoped_parameters_win_for_their_stream(hub_server: HubServer) -> None:
    events = read_events(
        hub_server,
        {"streams": "echo,reverse_echo", "message": "abc", "echo.message": "xyz", "count": 2},
    )
    messages = {(e.event, json.loads(e.data)["message"]) for e in events}
    assert messages == {("echo", "xyz"), ("reverse_echo", "cba")}


def test_unicode_messages_travel_intact(hub_server: HubServer) -> None:
    events = read_events(
        hub_server, {"streams": "echo,reverse_echo", "message": "héllo ✓ 日本", "count": 1}
    )
    assert {e.event: json.loads(e.data)["message"] for e in events} == {
        "echo": "héllo ✓ 日本",
        "reverse_echo": "本日 ✓ olléh",
    }


# --- resume --------------------------------------------------------------------------------


def test_resume_by_header_continues_every_stream(hub_server: HubServer) -> None:
    params = {"streams": "counter,echo", "interval": 0.01}
    first = read_events(hub_server, params, 7)
    last = positions(first[-1].id)
    last_n = max(json.loads(e.data)["n"] for e in first if e.event == "counter")
    resumed = read_events(hub_server, params, 6, headers={"Last-Event-ID": first[-1].id})
    counters = [json.loads(e.data)["n"] for e in resumed if e.event == "counter"]
    assert counters == list(range(last_n + 1, last_n + 1 + len(counters)))
    for event in resumed:
        # each stream's next position follows the resumed one
        assert int(positions(event.id)[event.event]) > int(last[event.event])
    first_of = {e.event: positions(e.id)[e.event] for e in reversed(resumed)}
    assert first_of == {name: str(int(last[name]) + 1) for name in first_of}


def test_resume_by_query_and_the_header_wins(hub_server: HubServer) -> None:
    by_query = read_events(
        hub_server, {"streams": "counter", "interval": 0, "last_event_id": "counter:41"}, 2
    )
    assert [json.loads(e.data)["n"] for e in by_query] == [42, 43]
    assert [e.id for e in by_query] == ["counter:42", "counter:43"]
    both = read_events(
        hub_server,
        {"streams": "counter", "interval": 0, "last_event_id": "counter:41"},
        1,
        headers={"Last-Event-ID": "counter:99"},
    )
    assert json.loads(both[0].data)["n"] == 100


def test_resume_ignores_streams_no_longer_selected(hub_server: HubServer) -> None:
    events = read_events(
        hub_server,
        {"streams": "counter,echo", "interval": 0, "count": 1},
        headers={"Last-Event-ID": "counter:4,reverse_echo:17,echo:-"},
    )
    assert {e.event: json.loads(e.data).get("n") for e in events} == {"counter": 5, "echo": None}
    assert all(set(positions(e.id)) == {"counter", "echo"} for e in events)


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "headers", "status", "code", "mentions"),
    [
        ("", {}, 400, "missing_streams", "streams"),
        ("?streams=", {}, 400, "missing_streams", "streams"),
        ("?streams=,,", {}, 400, "missing_streams", "streams"),
        ("?streams=" + ",".join(f"s{i}" for i in range(17)), {}, 400, "too_many_streams", "16"),
        ("?streams=echo,nope", {}, 404, "unknown_stream", "reverse_echo"),
        ("?streams=echo&interval=-1", {}, 422, "invalid_parameters", "interval"),
        ("?streams=echo&interval=soon", {}, 422, "invalid_parameters", "interval"),
        ("?streams=echo&colour=red", {}, 422, "invalid_parameters", "colour"),
        ("?streams=echo&counter.start=1", {}, 422, "invalid_parameters", "counter"),
        ("?streams=echo&echo.colour=red", {}, 422, "invalid_parameters", "colour"),
        ("?streams=echo&count=-2", {}, 422, "invalid_parameters", "count"),
        ("?streams=lifecycle&tag=x", {}, 422, "invalid_parameters", "report_port"),
        ("?streams=echo", {"Last-Event-ID": "echo"}, 400, "malformed_cursor", "stream:position"),
        ("?streams=echo", {"Last-Event-ID": "echo:soon"}, 400, "malformed_cursor", "echo"),
        ("?streams=echo&last_event_id=echo:1:2", {}, 400, "malformed_cursor", "echo"),
    ],
)
def test_bad_requests_get_a_clear_json_error(
    hub_server: HubServer,
    query: str,
    headers: dict[str, str],
    status: int,
    code: str,
    mentions: str,
) -> None:
    response = get(hub_server, "/events" + query, headers=headers)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert mentions in json.dumps(error)
    # the hub goes on serving everyone else
    assert read_events(hub_server, {"streams": "echo", "count": 1})[0].event == "echo"


def test_unknown_stream_error_lists_the_available_ones(hub_server: HubServer) -> None:
    error = get(hub_server, "/events?streams=nope,echo,nada").json()["error"]
    assert error["unknown"] == ["nope", "nada"]
    assert {"echo", "reverse_echo", "counter", "failing", "lifecycle"} <= set(error["available"])


def test_parameter_errors_name_stream_and_parameter(hub_server: HubServer) -> None:
    response = get(hub_server, "/events?streams=echo,counter&interval=-1&start=x")
    assert response.status_code == 422
    errors = {(e["stream"], e["parameter"]) for e in response.json()["error"]["errors"]}
    assert errors == {("echo", "interval"), ("counter", "interval"), ("counter", "start")}


# --- during streaming ----------------------------------------------------------------------


def test_a_raising_stream_ends_with_hub_error_and_the_others_go_on(hub_server: HubServer) -> None:
    events = read_events(
        hub_server,
        {"streams": "failing,echo", "fail_after": 2, "echo.interval": 0.02, "echo.count": 12},
    )
    names = [e.event for e in events]
    assert names.count("failing") == 2
    assert names.count("hub.error") == 1
    assert json.loads(events[names.index("hub.error")].data) == {
        "stream": "failing",
        "error": "RuntimeError: boom after 2",
    }
    assert names.count("echo") == 12
    assert "echo" in names[names.index("hub.error") :]  # echo went on after the failure
    assert "Traceback" in hub_server.output and "boom after 2" in hub_server.output


def test_an_event_of_the_wrong_type_is_a_hub_error(hub_server: HubServer) -> None:
    events = read_events(hub_server, {"streams": "wrong_type"})
    assert [e.event for e in events] == ["hub.error"]
    assert json.loads(events[0].data)["error"] == (
        "TypeError: stream 'wrong_type' yielded dict, expected Tick"
    )


def test_response_headers_retry_hint_and_pings(hub_server: HubServer) -> None:
    with httpx.stream(
        "GET", hub_server.url + "/events?streams=echo&interval=60", timeout=TIMEOUT
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-accel-buffering"] == "no"
        lines = response.iter_lines()
        assert next(lines) == "retry: 1500"
        seen = []
        for line in lines:  # the session server pings every 0.5 s; echo waits 60 s
            seen.append(line)
            if line == ": ping":
                break
    assert any(line.startswith("event: echo") for line in seen)


def test_disconnect_closes_every_generator(hub_server: HubServer, reports: Reports) -> None:
    params = {
        "streams": "lifecycle,echo",
        "report_port": reports.port,
        "tag": "t1",
        "interval": 0.01,
    }
    with httpx.Client(base_url=hub_server.url, timeout=TIMEOUT) as client:
        with connect_sse(client, "GET", "/events", params=params) as source:
            events = source.iter_sse()
            assert reports.next() == "open t1"
            assert next(e for e in events if e.event == "lifecycle").data == '{"tag":"t1"}'
    assert reports.next() == "close t1"  # the generator's finally ran after the client left


def test_curl_sees_frames_at_once_and_unbuffered(hub_server: HubServer) -> None:
    curl = shutil.which("curl")
    assert curl, "curl is needed for this test"
    url = hub_server.url + "/events?streams=echo,reverse_echo&message=hello&interval=60"
    with subprocess.Popen([curl, "-sN", url], stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        # echo waits 60 s after its first event: these lines can only come unbuffered
        lines = [process.stdout.readline() for _ in range(12)]
        process.terminate()
    text = "".join(lines)
    frame = (
        r"id: echo:0,reverse_echo:(-|0)\nevent: echo\n"
        r'data: \{"message":"hello","created_at":"\d{4}-\d\d-\d\dT[\d:.]+Z"\}\n\n'
    )
    assert text.startswith("retry: 1500\n\n")
    assert re.search(frame, text), text
    assert re.search(r'event: reverse_echo\ndata: \{"message":"olleh"', text), text


def test_curl_count_ends_by_itself(hub_server: HubServer) -> None:
    curl = shutil.which("curl")
    assert curl
    result = subprocess.run(
        [curl, "-sN", hub_server.url + "/events?streams=counter&interval=0&count=3"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0
    assert result.stdout == (
        "retry: 1500\n\n"
        "id: counter:-\n\n"  # the starting cursor, before any event
        'id: counter:0\nevent: counter\ndata: {"n":0}\n\n'
        'id: counter:1\nevent: counter\ndata: {"n":1}\n\n'
        'id: counter:2\nevent: counter\ndata: {"n":2}\n\n'
        'event: hub.end\ndata: {"streams":["counter"]}\n\n'  # over: no reconnect
    )


# --- catalog, health, docs -----------------------------------------------------------------


def test_catalog_describes_every_stream(hub_server: HubServer) -> None:
    catalog = {s["name"]: s for s in get(hub_server, "/streams").json()["streams"]}
    echo = catalog["echo"]
    assert echo["kind"] == "generated"
    assert "message" in echo["description"]
    assert set(echo["parameters"]["properties"]) == {"message", "interval", "count"}
    assert echo["parameters"]["properties"]["interval"]["minimum"] == 0
    assert set(echo["event"]["properties"]) == {"message", "created_at"}
    assert catalog["lifecycle"]["parameters"]["required"] == ["report_port", "tag"]
    assert "after" not in catalog["counter"]["parameters"]["properties"]  # LastPosition
    assert get(hub_server, "/streams/echo").json() == echo
    assert get(hub_server, "/streams/nope").status_code == 404


def test_health_and_openapi(hub_server: HubServer) -> None:
    health = get(hub_server, "/health").json()
    assert health["status"] == "ok" and health["streams"] >= 6
    spec = get(hub_server, "/openapi.json").json()
    assert {"/events", "/streams", "/streams/{name}", "/health"} <= set(spec["paths"])
    responses = spec["paths"]["/events"]["get"]["responses"]
    assert {"200", "400", "404", "422"} <= set(responses)
    assert "text/event-stream" in responses["200"]["content"]
    assert "ErrorBody" in spec["components"]["schemas"]
    assert get(hub_server, "/docs").status_code == 200


# --- plugins at start-up -------------------------------------------------------------------

PLUGIN = '''
from collections.abc import AsyncIterator
from hub import Event, stream

class Reading(Event):
    city: str
    celsius: float

@stream("{name}")
async def weather(city: str = "Oslo") -> AsyncIterator[Reading]:
    """Fake weather."""
    for celsius in (1.5, 2.5):
        yield Reading(city=city, celsius=celsius)
'''


def test_plugin_from_a_file(tmp_path: Path) -> None:
    plugin = tmp_path / "weather.py"
    plugin.write_text(PLUGIN.format(name="weather"))
    with HubServer(str(plugin), args=["--no-builtin-streams"]) as server:
        events = read_events(server, {"streams": "weather", "city": "Bergen"})
        assert [json.loads(e.data) for e in events] == [
            {"city": "Bergen", "celsius": 1.5},
            {"city": "Bergen", "celsius": 2.5},
        ]
        assert [s["name"] for s in get(server, "/streams").json()["streams"]] == ["weather"]


def test_plugin_from_hub_streams_environment(tmp_path: Path) -> None:
    plugin = tmp_path / "weather_env.py"
    plugin.write_text(PLUGIN.format(name="weather-env"))
    with HubServer(env={"HUB_STREAMS": str(plugin)}) as server:
        events = read_events(server, {"streams": "weather-env,echo", "echo.count": 1})
        assert Counter(e.event for e in events) == {"weather-env": 2, "echo": 1}


def test_plugin_from_an_installed_entry_point(tmp_path: Path) -> None:
    (tmp_path / "acme_weather.py").write_text(PLUGIN.format(name="acme-weather"))
    dist_info = tmp_path / "acme_weather-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-weather\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[hub.streams]\nweather = acme_weather\n")
    pythonpath = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    with HubServer(env={"PYTHONPATH": pythonpath}) as server:
        events = read_events(server, {"streams": "acme-weather"})
        assert [json.loads(e.data)["city"] for e in events] == ["Oslo", "Oslo"]


def start_and_fail(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_duplicate_plugin_is_refused_at_start_up(tmp_path: Path) -> None:
    plugin = tmp_path / "my_echo.py"
    plugin.write_text(PLUGIN.format(name="echo"))
    result = start_and_fail("--streams", str(plugin))
    assert result.returncode == 2
    assert str(plugin) in result.stderr
    assert "'echo' is already taken by plugin streams.echo" in result.stderr
    assert "Uvicorn running" not in result.stderr


def test_a_malformed_plugin_is_refused_at_start_up(tmp_path: Path) -> None:
    plugin = tmp_path / "shouty.py"
    plugin.write_text(PLUGIN.format(name="Shouty"))
    result = start_and_fail("--streams", str(plugin))
    assert result.returncode == 2
    assert str(plugin) in result.stderr and "'Shouty' is not valid" in result.stderr


# --- a stream that never sleeps ------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_fraction(pid: int, window: float = 1.0) -> float:
    """The share of one core the process used over `window` seconds of wall time."""
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    time.sleep(window)  # a measuring window, not a wait for anything
    return (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)


def test_interval_zero_goes_idle_after_disconnect_and_sigterm_stops_it(reports: Reports) -> None:
    with HubServer(str(Path(__file__).parent / "plugins")) as server:
        params = {
            "streams": "lifecycle,echo,reverse_echo",
            "interval": 0,
            "report_port": reports.port,
            "tag": "busy",
        }
        assert len(read_events(server, params, 3000)) == 3000
        assert reports.next() == "open busy"
        assert reports.next() == "close busy"
        assert busy_fraction(server.pid) < 0.2
        assert get(server, "/health").json()["subscriptions"] == 0
        assert server.stop(timeout=15) == 0
        assert server.stopped_gracefully, server.output


def test_sigterm_stops_the_hub_while_a_never_sleeping_stream_is_open(reports: Reports) -> None:
    with HubServer(str(Path(__file__).parent / "plugins")) as server:
        params = {
            "streams": "lifecycle,echo",
            "interval": 0,
            "report_port": reports.port,
            "tag": "t",
        }
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
            with connect_sse(client, "GET", "/events", params=params) as source:
                events = source.iter_sse()
                assert reports.next() == "open t"
                for _ in range(100):
                    next(events)
                os.kill(server.pid, signal.SIGTERM)
                assert reports.next() == "close t"
                assert server.wait(timeout=15) == 0
                assert server.stopped_gracefully, server.output


def test_events_ready_together_come_in_selection_order(hub_server: HubServer) -> None:
    for _ in range(5):
        events = read_events(hub_server, {"streams": "reverse_echo,echo,counter", "count": 1})
        assert [e.event for e in events] == ["counter", "echo", "reverse_echo"]


def test_duplicate_names_in_the_selection_collapse(hub_server: HubServer) -> None:
    events = read_events(hub_server, "streams=echo,echo&streams=echo&count=2&interval=0")
    assert [(e.event, e.id) for e in events] == [("echo", "echo:0"), ("echo", "echo:1")]


def test_cors_lets_named_origins_subscribe_and_no_others(cors_hub: HubServer) -> None:
    allowed = get(
        cors_hub, "/events?streams=echo&count=1", headers={"Origin": "https://app.example"}
    )
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    other = get(
        cors_hub, "/events?streams=echo&count=1", headers={"Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in other.headers
    preflight = httpx.options(
        cors_hub.url + "/events",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "last-event-id",
        },
        timeout=TIMEOUT,
    )
    assert preflight.status_code == 200
    assert "last-event-id" in preflight.headers["access-control-allow-headers"].lower()


def test_head_gives_the_headers_and_ends(hub_server: HubServer) -> None:
    response = httpx.head(hub_server.url + "/events?streams=echo", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.content == b""
    assert get(hub_server, "/health").json()["open_streams"] == 0  # nothing was opened


def test_options_without_cors_says_what_is_allowed(hub_server: HubServer) -> None:
    response = httpx.options(hub_server.url + "/events", timeout=TIMEOUT)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD, POST"
