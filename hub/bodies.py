"""Bodies the hub reads from clients (JSON, bounded in size, time and depth) and the answer it
writes for a publish."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.requests import ClientDisconnect, Request

from .cursor import quote_name
from .errors import RequestError

__all__ = ["is_json", "parse_json", "published_json", "read_json", "require_json"]


_EVENTS_HINT = "send one event as a JSON object, or several as a JSON array"


def is_json(content_type: str) -> bool:
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json"


def require_json(request: Request, action: str) -> None:
    """A 415 unless the request's body is sent as `application/json`; `action` says what
    the client does ("publish")."""
    if not is_json(request.headers.get("content-type", "")):
        raise RequestError(
            415,
            "unsupported_media_type",
            f"{action} with Content-Type: application/json (got "
            f"{request.headers.get('content-type', 'none')!r})",
            accepted=["application/json"],
        )


async def read_json(request: Request, limit: int, timeout: float, hint: str = _EVENTS_HINT) -> Any:
    """The request's JSON body, read no further than `limit` bytes and within `timeout` s."""
    too_large = RequestError(
        413, "body_too_large", f"the body is over the limit of {limit} bytes", limit=limit
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise too_large
    except TimeoutError:
        raise RequestError(
            408,
            "body_timeout",
            f"the body did not arrive within {timeout:g} s ({len(body)} bytes came)",
        ) from None
    except ClientDisconnect:
        # Nobody reads this answer; it ends the request without a traceback.
        raise RequestError(400, "incomplete_body", "the client left before its body") from None
    if len(body) > _JSON_IN_A_THREAD:
        # A large body is parsed in a thread: the pairs hook runs Python code, so the loop
        # gets its turns meanwhile instead of waiting for the whole parse.
        return await asyncio.to_thread(parse_json, bytes(body), "the body", hint)
    return parse_json(body, "the body", hint)


def parse_json(
    body: bytes | bytearray | str, what: str = "the body", hint: str = _EVENTS_HINT
) -> Any:
    """JSON as the hub reads it from a client: no key twice in an object, no NaN, at most
    as deep as the parser goes; or the `RequestError` naming what is wrong with `what`, and
    `hint`, what to send instead."""
    try:
        return json.loads(body, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except _DuplicateKey as exc:
        raise RequestError(
            422,
            "invalid_events",
            f"the key {exc.key!r} appears twice in one object; each key once",
            errors=[{"field": exc.key, "message": "given twice in one object"}],
        ) from None
    except RecursionError:
        raise RequestError(
            400, "malformed_json", f"{what} nests too deep to read; events nest 32 levels at most"
        ) from None
    except ValueError as exc:  # also bad UTF-8
        raise RequestError(
            400,
            "malformed_json",
            f"{what} is not JSON: {exc}; {hint}",
        ) from None


# Bodies larger than this are parsed off the loop.
_JSON_IN_A_THREAD = 64 * 1024


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return result


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON: refused like any other non-JSON.
    raise ValueError(f"{name} is not a JSON value")


def published_json(name: str, positions: list[str], **extra: str) -> str:
    """The answer to a publish to the topic `name`: the events' positions, and the id a
    subscriber of this topic alone sees for each. Written here rather than validated and
    encoded by FastAPI: a batch of 50,000 events answers 100,000 strings, which that would
    take a tenth of a second on."""
    prefix = quote_name(name) + ":"
    ids = json.dumps([prefix + position for position in positions])
    more = "".join(f"{json.dumps(key)}:{json.dumps(value)}," for key, value in extra.items())
    return f'{{{more}"positions":{json.dumps(positions)},"ids":{ids}}}'
