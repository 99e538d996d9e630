"""Events and their Server-Sent-Events wire form.

Everything here is pure: values in, bytes out. The transport lives in `hub.app`.

A frame is built in two parts so that fan-out stays cheap: the `event:` and `data:` lines
(`encode_body`) depend only on the event and are encoded once, however many subscribers
receive it; the `id:` line (`encode_frame`) depends on each subscriber's selection.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field

__all__ = [
    "CONTROL_PREFIX",
    "Event",
    "ReceivedAt",
    "control_body",
    "decode_frames",
    "encode_body",
    "encode_event",
    "encode_comment",
    "encode_frame",
    "encode_retry",
    "event_prefix",
]

# Names of the hub's own control events start with this; stream names cannot contain a dot.
CONTROL_PREFIX = "hub."

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class Event(BaseModel):
    """Base class of every stream's event model. Its compact JSON is the frame's `data:`.

    Fields a model does not declare are ignored when it is built in Python (pydantic's
    default: forbidding them costs a third more per event on a stream that makes 100k a
    second); a published body with an unknown field is refused by the hub all the same.
    """


def _now() -> datetime:
    return datetime.now(UTC)


# A field the hub fills in with the time it received the event. It is read-only for
# publishers: a POST that sets it is refused, and the catalog's schema marks it readOnly.
ReceivedAt = Annotated[
    datetime,
    Field(default_factory=_now, json_schema_extra={"readOnly": True}),
]


def _field(name: bytes, value: str) -> bytes:
    # A line break inside a field would end the field early on the reader's side.
    if _LINE_BREAK.search(value):
        raise ValueError(f"SSE {name.decode()} field must not contain a line break: {value!r}")
    return name + b": " + value.encode() + b"\n"


def encode_body(event: str, data: str) -> bytes:
    """The shared part of a frame: the `event:` line, the `data:` lines and the blank line.

    Multi-line data becomes one `data:` line per line, which readers join back with `\\n`.
    """
    lines = [_field(b"event", event)]
    lines.extend(b"data: " + line.encode() + b"\n" for line in _LINE_BREAK.split(data))
    lines.append(b"\n")
    return b"".join(lines)


def encode_event(prefix: bytes, event: Event) -> bytes:
    """`encode_body` for an event model, fast: `prefix` is `event_prefix(name)`.

    Compact JSON holds no raw line break (JSON escapes them), so its one `data:` line needs
    no splitting, and pydantic gives the bytes directly.
    """
    return prefix + event.__pydantic_serializer__.to_json(event) + b"\n\n"


def event_prefix(name: str) -> bytes:
    """The bytes before an event's JSON: its `event:` line and the `data: ` field name."""
    return _field(b"event", name) + b"data: "


def encode_frame(body: bytes, id: str | None) -> bytes:
    """A whole frame: the subscriber's `id:` line (if any) followed by a shared body."""
    if id is None:
        return body
    if "\0" in id:  # readers ignore such an id and keep the one before: refuse it here
        raise ValueError(f"SSE id field must not contain NUL: {id!r}")
    return _field(b"id", id) + body


def encode_comment(text: str) -> bytes:
    """A comment frame (`: text`), ignored by readers; keeps idle connections open."""
    return b"".join(b": " + line.encode() + b"\n" for line in _LINE_BREAK.split(text)) + b"\n"


def encode_retry(milliseconds: int) -> bytes:
    """A `retry:` hint: how long a browser waits before it reconnects."""
    if not isinstance(milliseconds, int) or isinstance(milliseconds, bool) or milliseconds < 0:
        raise ValueError(f"retry must be a non-negative int of milliseconds, got {milliseconds!r}")
    return b"retry: %d\n\n" % milliseconds


def control_body(kind: str, **data: Any) -> bytes:
    """The shared body of a control event such as `hub.error`; its data is a JSON object."""
    return encode_body(
        CONTROL_PREFIX + kind,
        json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str),
    )


def decode_frames(chunk: bytes) -> list[tuple[bytes | None, bytes | None, bytes | None]]:
    """The `(event, id, data)` of each frame in `chunk`, whole frames as the hub writes them
    (for the transports that are not SSE: the WebSocket's messages, `hub.subscribe()`'s
    events). A frame of `retry:` or comments alone gives nothing; an id-only frame gives
    `(None, id, None)`. An event's data is one line (compact JSON holds no raw line break);
    several `data:` lines are joined with `\\n`, as a reader would."""
    decoded = []
    for frame in chunk.split(b"\n\n"):
        event = id = data = None
        for line in frame.split(b"\n"):
            field, _, value = line.partition(b": ")
            if field == b"data":
                data = value if data is None else data + b"\n" + value
            elif field == b"event":
                event = value
            elif field == b"id":
                id = value
        if event is not None or id is not None or data is not None:
            decoded.append((event, id, data))
    return decoded
