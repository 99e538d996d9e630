"""`GET /asyncapi.json`: valid against the official AsyncAPI 3.0 JSON Schema (npm's
`@asyncapi/specs`, installed by `.ci/run`, or here on first use), every `$ref` resolving, every
registered stream a channel, and filtered by the caller's grants."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from support import get
from test_auth import KEY, PLUGIN, bearer, mint

from hub.testing import HubServer

# Where `.ci/run` installs the npm package (ASYNCAPI_SPECS names another directory).
SPECS_PREFIX = Path(__file__).parent.parent / ".ci" / "asyncapi"
SPECS_VERSION = "6"


@pytest.fixture(scope="session")
def asyncapi_schema() -> dict[str, Any]:
    """The official AsyncAPI 3.0.0 JSON Schema, from the npm package `@asyncapi/specs`."""
    prefix = Path(os.environ.get("ASYNCAPI_SPECS", SPECS_PREFIX))
    schema = prefix / "node_modules" / "@asyncapi" / "specs" / "schemas" / "3.0.0.json"
    if not schema.exists():
        npm = shutil.which("npm")
        assert npm, "npm is needed to fetch @asyncapi/specs (Debian: apt-get install npm)"
        subprocess.run(
            [npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(prefix)]
            + [f"@asyncapi/specs@{SPECS_VERSION}"],
            check=True,
            capture_output=True,
            timeout=120,
        )
    loaded: dict[str, Any] = json.loads(schema.read_text())
    return loaded


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"not a local reference: {ref}"
    node: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve at {part!r}"
        node = node[part]
    return node


def check(document: dict[str, Any], schema: dict[str, Any]) -> None:
    errors = list(jsonschema_rs.validator_for(schema).iter_errors(document))
    assert not errors, "\n".join(f"{e.instance_path}: {e}"[:500] for e in errors[:10])
    for ref in refs(document):
        resolve(document, ref)


def test_the_document_validates_and_names_every_stream(
    hub_server: HubServer, asyncapi_schema: dict[str, Any]
) -> None:
    document = get(hub_server, "/asyncapi.json").json()
    check(document, asyncapi_schema)
    assert document["asyncapi"] == "3.0.0"
    catalog = get(hub_server, "/streams").json()["streams"]
    titles = {channel.get("title") for channel in document["channels"].values()}
    assert {stream["name"] for stream in catalog} <= titles
    for stream in catalog:
        channel = document["channels"][stream["name"].replace("-", "_")]
        # Its event's schema, and its parameters for every way in.
        message = resolve(document, channel["messages"][stream["name"].replace("-", "_")]["$ref"])
        assert message["payload"]["properties"].keys() == stream["event"]["properties"].keys()
        assert channel["bindings"]["ws"]["query"]["properties"].keys() == (
            stream["parameters"]["properties"].keys()
        )
        if stream["keyed"]:
            assert channel["address"] == f"{stream['name']}/{{key}}"
            assert "key" in channel["parameters"]
    operations = document["operations"]
    for way in ("sse_get", "sse_post", "ws"):
        assert operations[f"echo_{way}"]["action"] == "receive"
    assert operations["echo_sse_get"]["bindings"]["http"]["method"] == "GET"
    assert operations["echo_sse_post"]["bindings"]["http"]["method"] == "POST"
    # Publishing: the topics that take events, over HTTP and the WebSocket; not echo.
    assert operations["room_publish"]["action"] == "send"
    assert operations["room_ws_publish"]["action"] == "send"
    assert "echo_publish" not in operations
    assert document["servers"]["ws"]["protocol"] == "ws"


def test_the_document_is_filtered_by_the_callers_grants(
    asyncapi_schema: dict[str, Any],
) -> None:
    args = ["--no-builtin-streams", "--no-entry-points"]
    with HubServer(PLUGIN, args=args, env={"HUB_AUTH_KEY": KEY}) as server:
        anonymous = get(server, "/asyncapi.json").json()
        check(anonymous, asyncapi_schema)
        assert "room" not in anonymous["channels"]
        assert "news" in anonymous["channels"]  # public
        assert "securitySchemes" in anonymous["components"]
        token = mint(subscribe=["room"], publish=["acme_orders"])
        granted = get(server, "/asyncapi.json", headers=bearer(token)).json()
        check(granted, asyncapi_schema)
        assert {"room", "acme_orders"} <= granted["channels"].keys()
        assert "acme_bills" not in granted["channels"]
        assert "acme_orders_publish" in granted["operations"]
        assert "room_publish" not in granted["operations"]
