"""`GET /asyncapi.json`: the hub's contract as an AsyncAPI 3.0 document, made from the registry.

Each stream is a channel, addressed by its name (a keyed family's by `family/{key}`, with
`key` as a parameter), carrying its event's JSON Schema. The operations say how a client
reaches it: `receive` over Server-Sent Events (`GET /events` with the stream parameters in the
query, `POST /events` with them in a JSON body) and over the WebSocket (`/ws`, each event one
JSON message), and, for a topic that accepts events, `send` (`POST /streams/{name}/events`,
or a `publish` message on the WebSocket). The document is built for each caller from the
streams its grants let it see, as the catalog is.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from . import __version__
from .events import CONTROL_PREFIX
from .registry import Definition, Topic

__all__ = ["document"]

_REF = "#/components/schemas/{model}"
# The control events every subscription may carry, and what their data holds.
_CONTROL: dict[str, tuple[str, dict[str, Any]]] = {
    "gap": (
        "a topic's history no longer reaches back to the cursor: replay starts later",
        {"stream": "string", "requested": "string", "resumed_from": "string"},
    ),
    "error": (
        "a stream failed and ended; the others go on",
        {"stream": "string", "error": "string"},
    ),
    "overflow": ("the subscriber fell behind and is cut off", {"reason": "string"}),
    "shutdown": ("the hub is shutting down: reconnect", {"reason": "string"}),
    "expired": ("the token ran out: reconnect with a fresh one", {"reason": "string"}),
    "end": (
        "every selected stream has ended (`count`, or its generator returned): the last "
        "message; do not reconnect",
        {"streams": "array"},
    ),
}


def document(
    definitions: Iterable[Definition],
    publishable: Iterable[str],
    host: str,
    secured: bool,
) -> dict[str, Any]:
    """The AsyncAPI document for `definitions` (the streams a caller may see), of which the
    topics named in `publishable` (those it may publish to) get send operations. `host` is
    the hub's as the caller reached it; `secured` adds the bearer token scheme."""
    may_publish = set(publishable)
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for definition in sorted(definitions, key=lambda d: d.name):
        _stream(definition, definition.name in may_publish, channels, operations, messages, schemas)
    _control(channels, operations, messages)
    servers: dict[str, Any] = {
        "sse": {
            "host": host,
            "protocol": "http",
            "pathname": "/events",
            "description": "Server-Sent Events: `GET /events?streams=a,b` (or `POST /events` "
            "with a JSON body) merges the selected streams into one response. Each frame's "
            "`event:` is the stream, `id:` the cursor that resumes every selected stream "
            "(send it back as `Last-Event-ID`), `data:` the event's JSON.",
        },
        "ws": {
            "host": host,
            "protocol": "ws",
            "pathname": "/ws",
            "description": "WebSocket: the query of `GET /events`; each event is one JSON text "
            'message `{"event", "id", "data"}`, the first `{"id"}` alone (the starting '
            'cursor); a client publishes with `{"publish": "<topic>", "data": ...}`.',
        },
        "publish": {
            "host": host,
            "protocol": "http",
            "pathname": "/streams",
            "description": "`POST /streams/{name}/events` publishes one event or a JSON array.",
        },
    }
    components: dict[str, Any] = {"messages": messages, "schemas": schemas}
    if secured:
        components["securitySchemes"] = {
            "token": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "A JWT whose claim `hub` grants `subscribe` and `publish` "
                "patterns; also accepted as the cookie `hub_token` or the query parameter "
                "`access_token`.",
            }
        }
        for server in servers.values():
            server["security"] = [{"$ref": "#/components/securitySchemes/token"}]
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "hub",
            "version": __version__,
            "description": "Many live event streams, merged into one resumable "
            "Server-Sent-Events response, or WebSocket.",
        },
        "defaultContentType": "application/json",
        "servers": servers,
        "channels": channels,
        "operations": operations,
        "components": components,
    }


def _id(name: str) -> str:
    return name.replace("-", "_")


def _stream(
    definition: Definition,
    publishable: bool,
    channels: dict[str, Any],
    operations: dict[str, Any],
    messages: dict[str, Any],
    schemas: dict[str, Any],
) -> None:
    name, ident = definition.name, _id(definition.name)
    keyed = isinstance(definition, Topic) and definition.key_type is not None
    event = _schema(definition.event_model.model_json_schema(ref_template=_REF), schemas)
    parameters = _schema(definition.parameters.model_json_schema(ref_template=_REF), schemas)
    messages[ident] = {
        "name": name,
        "title": f"{name} event",
        "summary": (definition.description or name).splitlines()[0],
        "payload": event,
    }
    envelope = {
        "type": "object",
        "required": ["event", "id", "data"],
        "properties": {
            "event": {"type": "string", "description": "the stream's name (a keyed topic's)"},
            "id": {"type": "string", "description": "the cursor after this event"},
            "data": copy.deepcopy(event),
        },
    }
    messages[f"{ident}_ws"] = {
        "name": name,
        "title": f"{name} event on the WebSocket",
        "payload": envelope,
    }
    channel_messages = {
        ident: {"$ref": f"#/components/messages/{ident}"},
        f"{ident}_ws": {"$ref": f"#/components/messages/{ident}_ws"},
    }
    channel: dict[str, Any] = {
        "address": f"{name}/{{key}}" if keyed else name,
        "title": name,
        "description": definition.description or name,
        "messages": channel_messages,
        "bindings": {"ws": {"query": parameters, "bindingVersion": "0.1.0"}},
    }
    if keyed:
        channel["parameters"] = {
            "key": {"description": "the topic's key: 1 to 128 of A-Z a-z 0-9 _ - ~"}
        }
    if publishable:
        body = _published(definition, event)
        messages[f"{ident}_publish"] = {
            "name": f"publish {name}",
            "title": f"events published to {name}",
            "payload": {"oneOf": [body, {"type": "array", "items": body, "minItems": 1}]},
        }
        messages[f"{ident}_ws_publish"] = {
            "name": f"publish {name} on the WebSocket",
            "payload": {
                "type": "object",
                "required": ["publish", "data"],
                "properties": {
                    "publish": {"type": "string", "description": "the topic's name"},
                    "data": {"oneOf": [body, {"type": "array", "items": body, "minItems": 1}]},
                    "ref": {"description": "echoed in the answer, to match it"},
                },
            },
        }
        for suffix in ("_publish", "_ws_publish"):
            channel_messages[ident + suffix] = {"$ref": f"#/components/messages/{ident}{suffix}"}
    channels[ident] = channel
    ref = {"$ref": f"#/channels/{ident}"}

    def message(suffix: str = "") -> list[dict[str, str]]:
        return [{"$ref": f"#/channels/{ident}/messages/{ident}{suffix}"}]

    selection = f"streams={name}" + ("/<key>" if keyed else "")
    operations[f"{ident}_sse_get"] = {
        "action": "receive",
        "channel": ref,
        "title": f"{name} over SSE",
        "summary": f"GET /events?{selection} (with other streams, merged)",
        "messages": message(),
        "bindings": {"http": {"method": "GET", "query": parameters, "bindingVersion": "0.3.0"}},
    }
    operations[f"{ident}_sse_post"] = {
        "action": "receive",
        "channel": ref,
        "title": f"{name} over SSE, selected by a POST body",
        "summary": f'POST /events {{"streams": ["{name}{"/<key>" if keyed else ""}"], '
        '"params": {...}}',
        "messages": message(),
        "bindings": {"http": {"method": "POST", "bindingVersion": "0.3.0"}},
    }
    operations[f"{ident}_ws"] = {
        "action": "receive",
        "channel": ref,
        "title": f"{name} over the WebSocket",
        "summary": f"/ws?{selection}",
        "messages": message("_ws"),
    }
    if publishable:
        path = f"/streams/{name}/{{key}}/events" if keyed else f"/streams/{name}/events"
        operations[f"{ident}_publish"] = {
            "action": "send",
            "channel": ref,
            "title": f"publish to {name}",
            "summary": f"POST {path}",
            "messages": message("_publish"),
            "bindings": {"http": {"method": "POST", "bindingVersion": "0.3.0"}},
        }
        operations[f"{ident}_ws_publish"] = {
            "action": "send",
            "channel": ref,
            "title": f"publish to {name} on the WebSocket",
            "summary": '{"publish": "' + name + ("/<key>" if keyed else "") + '", "data": ...}',
            "messages": message("_ws_publish"),
        }


def _control(
    channels: dict[str, Any], operations: dict[str, Any], messages: dict[str, Any]
) -> None:
    """The hub's own control events, which any subscription may carry (they have no id)."""
    channel_messages = {}
    for kind, (summary, fields) in _CONTROL.items():
        ident = f"hub_{kind}"
        messages[ident] = {
            "name": CONTROL_PREFIX + kind,
            "summary": summary,
            "payload": {
                "type": "object",
                "properties": {field: {"type": type_} for field, type_ in fields.items()},
            },
        }
        channel_messages[ident] = {"$ref": f"#/components/messages/{ident}"}
    channels["hub"] = {
        "address": None,
        "title": "control events",
        "description": "Events of the hub itself (`hub.gap`, `hub.error`, ...), interleaved "
        "with any subscription's; they carry no id.",
        "messages": channel_messages,
    }
    operations["hub_control"] = {
        "action": "receive",
        "channel": {"$ref": "#/channels/hub"},
        "title": "control events",
        "messages": [{"$ref": f"#/channels/hub/messages/{m}"} for m in channel_messages],
    }


def _schema(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """`schema` with its `$defs` moved into the components' schemas (its refs point there)."""
    schema = dict(schema)
    schemas.update(schema.pop("$defs", {}))
    return schema


def _published(definition: Definition, event: dict[str, Any]) -> dict[str, Any]:
    """What a publisher sends of an event: the fields the hub fills in left out."""
    read_only = definition.read_only if isinstance(definition, Topic) else frozenset()
    body = copy.deepcopy(event)
    body["properties"] = {k: v for k, v in body.get("properties", {}).items() if k not in read_only}
    body["required"] = [k for k in body.get("required", []) if k in body["properties"]]
    body["additionalProperties"] = False
    return body
