"""schemathesis against a real hub's `/openapi.json`: no 5xx, nothing outside the document.

Every operation the document lists is called with generated requests, valid and invalid
(schemathesis's examples, coverage and fuzzing phases, both generation modes), and each answer
must be one the document describes: a documented status code, a documented content type, a body
that fits the documented schema, and never a server error. The same goes for methods the
document does not list on a path (405 with `Allow`).

`GET /events` (and `POST /events`, the same with the selection in a body) is the exception
that needs care: when the selection is valid, its 200 is an SSE
stream that never ends (a topic waits for publishes, `echo` repeats every second), so the usual
"send, read the whole body, validate" would hang. Adding `count=1` does not make it
terminate either (a topic with `count=1` waits for the next publish), and a read timeout would
turn a live stream into a transport error. So those operations are sent by this file, streamed:
the head is read, and then
- a 200 is checked for what the document can say of a stream (status 200 documented, content
  type `text/event-stream`) plus the hub's own contract for its first chunk (it starts with the
  `retry:` hint), and the connection is closed without reading further; the document gives the
  200 body only as `type: string`, so nothing is lost by not reading it whole;
- any other answer is complete (a JSON error), and is handed to schemathesis's checks like every
  other operation's response.
Every other operation answers a bounded body and goes through `case.call_and_validate`.

The document: the operations are generated at collection time from `create_app(...).openapi()`
with the settings `HubServer` gives its child (the environment's), and the first test checks that
the running hub serves exactly that document at `/openapi.json`. (Loading it from the server
through a fixture, `schemathesis.pytest.from_fixture`, fails under pytest 9.2 in schemathesis
4.32: it sets `node._nodeid`, which pytest no longer has.) The last test checks that the hub
logged no traceback and no ERROR meanwhile.

Bounded: at most 25 generated examples per operation and phase, one hub for the module; the
whole file runs in well under a minute.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from hub.app import create_app
from hub.settings import Settings
from hub.testing import HubServer

MAX_EXAMPLES = 25
REQUEST_TIMEOUT = 10.0

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    unsupported_method,
]


@pytest.fixture(scope="module")
def server() -> Iterator[HubServer]:
    with HubServer() as hub:
        yield hub


def _document() -> dict[str, Any]:
    """The OpenAPI document of a hub made with the same settings as `HubServer`'s."""
    return create_app(Settings.from_env()).openapi()


schema = schemathesis.openapi.from_dict(_document())
schema.config.generation.update(
    max_examples=MAX_EXAMPLES,
    modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
)


def test_the_running_hub_serves_the_document_tested_here(server: HubServer) -> None:
    served = requests.get(server.url + "/openapi.json", timeout=REQUEST_TIMEOUT)
    assert served.status_code == 200
    assert served.json() == schema.raw_schema


def _is_events_stream(case: schemathesis.Case) -> bool:
    return case.path == "/events" and case.method.upper() in ("GET", "POST")


@schema.parametrize()
@hypothesis.settings(
    deadline=None,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_every_answer_is_documented_and_none_is_a_server_error(
    case: schemathesis.Case, server: HubServer
) -> None:
    if not _is_events_stream(case):
        case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=REQUEST_TIMEOUT)
        return
    kwargs = case.as_transport_kwargs(base_url=server.url)
    with requests.request(**kwargs, stream=True, timeout=REQUEST_TIMEOUT) as response:
        if response.status_code == 200:
            assert response.headers["content-type"].startswith("text/event-stream"), (
                response.headers
            )
            first = next(response.iter_content(chunk_size=None))
            assert first.startswith(b"retry:"), first
            return
        response.content  # noqa: B018 (reads the whole, bounded, error body)
    case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)


def test_the_hub_logged_no_traceback(server: HubServer) -> None:
    """Run last: whatever schemathesis sent, the server's log holds no traceback or ERROR."""
    time.sleep(0.3)  # the log is read by a thread: let the last lines arrive
    problems = [
        line.rstrip()
        for line in server.lines
        if "Traceback" in line or line.startswith("ERROR") or "Exception in ASGI" in line
    ]
    assert problems == [], server.output[-5000:]
