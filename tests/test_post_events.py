"""`POST /events`: the selection as a JSON body, the same response and errors as `GET /events`."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse
from support import TIMEOUT, get, publish_chat, room

from hub.testing import HubServer


def posted(server: HubServer, body: Any, **options: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/events", json=body, timeout=TIMEOUT, **options)


def test_the_same_frames_as_get(hub_server: HubServer) -> None:
    lobby = room()
    ids = publish_chat(hub_server, lobby, "one", "two", "three")
    query = {"streams": f"{lobby},counter", "last_event_id": ids[0], "count": 2, "interval": 0}
    by_get = get(hub_server, "/events", params=query)
    body = {
        "streams": [lobby, "counter"],
        "params": {"count": 2, "counter.interval": 0},
        "last_event_id": ids[0],
    }
    by_post = posted(hub_server, body)
    assert by_post.status_code == by_get.status_code == 200
    assert by_post.headers["content-type"] == by_get.headers["content-type"]

    def frames(text: str) -> dict[str, list[str]]:
        """Each stream's frames, and the cursor that ends the response."""
        streams: dict[str, list[str]] = {}
        for frame in text.split("\n\n"):
            lines = dict(line.split(": ", 1) for line in frame.splitlines() if ": " in line)
            if "event" in lines:
                streams.setdefault(lines["event"], []).append(lines["data"])
        return streams

    get_frames, post_frames = frames(by_get.text), frames(by_post.text)
    # The topic's replay is byte for byte the same; counter's events are counts.
    assert post_frames == get_frames
    assert [json.loads(d)["text"] for d in post_frames[lobby]] == ["two", "three"]
    assert by_post.text.startswith("retry: ")
    last_id = [line for line in by_post.text.splitlines() if line.startswith("id: ")][-1]
    assert last_id == [line for line in by_get.text.splitlines() if line.startswith("id: ")][-1]


def test_a_comma_separated_string_and_lists_of_values(hub_server: HubServer) -> None:
    answer = posted(
        hub_server,
        {"streams": "echo", "params": {"message": "hi", "count": 1, "interval": 0.0}},
    )
    assert answer.status_code == 200
    assert '"message":"hi"' in answer.text


def test_a_last_event_id_header_wins_over_the_body(hub_server: HubServer) -> None:
    lobby = room()
    ids = publish_chat(hub_server, lobby, "a", "b", "c")
    body = {"streams": [lobby], "params": {"count": 1}, "last_event_id": ids[0]}
    with httpx.Client(base_url=hub_server.url, timeout=TIMEOUT) as client:
        with connect_sse(
            client, "POST", "/events", json=body, headers={"Last-Event-ID": ids[1]}
        ) as source:
            events = [e for e in source.iter_sse() if e.event == lobby]
    assert [json.loads(e.data)["text"] for e in events] == ["c"]
    assert events[0].id == ids[2]


CASES = [
    ({"streams": []}, {}),  # 400 missing_streams
    ({"streams": ["nope"]}, {"streams": "nope"}),  # 404
    ({"streams": ["room"]}, {"streams": "room"}),  # 422 invalid_key
    ({"streams": ["echo"], "params": {"nope": 1}}, {"streams": "echo", "nope": "1"}),  # 422
    ({"streams": ["echo"], "params": {"interval": -1}}, {"streams": "echo", "interval": "-1"}),
    (
        {"streams": ["echo"], "last_event_id": "echo:x"},
        {"streams": "echo", "last_event_id": "echo:x"},
    ),
]


@pytest.mark.parametrize(("body", "query"), CASES)
def test_the_same_errors_as_get(
    hub_server: HubServer, body: dict[str, Any], query: dict[str, str]
) -> None:
    by_get = get(hub_server, "/events", params=query)
    by_post = posted(hub_server, body)
    assert by_get.status_code >= 400
    assert by_post.status_code == by_get.status_code
    assert by_post.json() == by_get.json()


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (b'{"streams": ["echo"]', {"content-type": "application/json"}, 400, "malformed_json"),
        (b'{"streams": ["echo"]}', {"content-type": "text/plain"}, 415, "unsupported_media_type"),
        (b'["echo"]', {"content-type": "application/json"}, 422, "invalid_request"),
        (
            b'{"streams": ["echo"], "paramz": {}}',
            {"content-type": "application/json"},
            422,
            "invalid_request",
        ),
        (
            b'{"streams": ["echo"], "params": {"message": {"a": 1}}}',
            {"content-type": "application/json"},
            422,
            "invalid_request",
        ),
        (
            b'{"streams": "' + b"x" * 70_000 + b'"}',
            {"content-type": "application/json"},
            413,
            "body_too_large",
        ),
    ],
)
def test_a_bad_body_is_a_clear_4xx(
    hub_server: HubServer, content: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    answer = httpx.post(
        f"{hub_server.url}/events", content=content, headers=headers, timeout=TIMEOUT
    )
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code
    if status == 422:
        assert error["errors"] and all(e["where"] for e in error["errors"])


def test_a_browser_preflight_for_post(cors_hub: HubServer) -> None:
    origin = "https://app.example"
    preflight = httpx.options(
        f"{cors_hub.url}/events",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
        timeout=TIMEOUT,
    )
    assert preflight.status_code == 200
    assert "POST" in preflight.headers["access-control-allow-methods"]
    answer = httpx.post(
        f"{cors_hub.url}/events",
        json={"streams": ["echo"], "params": {"count": 1, "interval": 0}},
        headers={"Origin": origin},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == origin
