"""From a request's query and cursor to a validated `Subscription`, or a `RequestError`.

Nothing is opened here: every mistake is found before the first byte is streamed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from .auth import Access, unauthorized
from .cursor import CursorError, parse_cursor
from .errors import RequestError
from .registry import Definition, InvalidKey, Registry, Stream, Topic, UnknownStream

__all__ = [
    "RequestError",
    "Selected",
    "Subscription",
    "available_streams",
    "find_stream",
    "parse_subscription",
    "query_pairs",
    "split_streams",
    "unknown_stream",
]

# Query parameters read by the hub itself rather than passed to streams.
HUB_QUERY_PARAMETERS = frozenset({"streams", "last_event_id", "access_token"})
# The longest cursor read: 16 streams of long names and positions fit several times over.
MAX_CURSOR_LENGTH = 8192
# count=0 would end before the first event: a response of nothing, or an EventSource that
# reconnects for ever.
_COUNT_ACCEPTS = (
    "count is the number of events after which the stream ends: a whole number, 1 or more "
    "(leave it out for no end)"
)
# A generated stream's position is a count, below this (what a 64-bit integer holds): no
# stream counts that far, and a larger one is no position the hub gave.
_COUNT_LIMIT = 2**63


@dataclass(frozen=True, slots=True)
class Selected:
    """One stream of a subscription: its definition, validated arguments, and where it resumes."""

    stream: Definition
    arguments: dict[str, Any]
    count: int | None
    # Where it resumes: after this position of a generated stream (an int) or of a topic
    # (the broker's position); None without one.
    after: int | str | None

    @property
    def name(self) -> str:
        return self.stream.name


@dataclass(frozen=True, slots=True)
class Subscription:
    selected: tuple[Selected, ...]  # sorted by stream name
    # The cursor the subscription resumes from, limited to the selected streams.
    start: dict[str, str | None] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.selected]


def split_streams(values: Iterable[str]) -> list[str]:
    """`?streams=a,b&streams=c` -> ['a', 'b', 'c'], blanks dropped, duplicates collapsed."""
    names: dict[str, None] = {}
    for value in values:
        for name in value.split(","):
            if name.strip():
                names[name.strip()] = None
    return list(names)


def query_pairs(params: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> list[tuple[str, str]]:
    """Stream parameters given in Python (`{"message": "hi", "echo.interval": 0}`) as the
    query's pairs of text; a list value repeats its parameter."""
    pairs = []
    for key, value in params.items() if isinstance(params, Mapping) else params:
        for item in value if isinstance(value, list | tuple) else [value]:
            text = ("true" if item else "false") if isinstance(item, bool) else str(item)
            pairs.append((str(key), text))
    return pairs


def parse_subscription(
    registry: Registry,
    names: Sequence[str],
    query: Iterable[tuple[str, str]],
    last_event_id: str | None = None,
    *,
    max_streams: int = 16,
    check_position: Callable[[str], None] | None = None,
    access: Access | None = None,
) -> Subscription:
    """Validate a selection, its parameters and its cursor against the registry.

    `query` holds the stream parameters only (not `streams` nor `last_event_id`), as pairs,
    in order, repeats included. `check_position` is the broker's check of a topic position.
    `access` is the caller's: what it may read is checked before its parameters, and the
    streams it may not see are never named; the principal reaches the streams that ask.
    """
    if not names:
        available = available_streams(registry, access)
        raise RequestError(
            400,
            "missing_streams",
            "query parameter 'streams' is required: a comma-separated list of stream names, "
            f"e.g. ?streams={','.join(available[:2]) or 'echo'}",
            available=available,
        )
    if len(names) > max_streams:
        raise RequestError(
            400,
            "too_many_streams",
            f"{len(names)} streams selected; at most {max_streams} are accepted per request",
            limit=max_streams,
        )
    streams = _find_streams(registry, names, access)
    principal = None
    if access is not None:
        access.check_subscribe(streams)
        principal = access.principal
    _check_callers(streams, principal is not None)
    arguments, errors = _route_parameters(streams, query)
    start = _read_cursor(streams, last_event_id, check_position)
    selected = []
    for definition in streams:
        try:
            values = definition.parameters.model_validate(arguments[definition.name])
        except ValidationError as exc:
            errors += [
                {
                    "stream": definition.name,
                    "parameter": ".".join(str(part) for part in error["loc"]),
                    "message": _COUNT_ACCEPTS if error["loc"] == ("count",) else error["msg"],
                    "input": error.get("input") if error["type"] != "missing" else None,
                }
                for error in exc.errors(include_url=False)
            ]
            continue
        # Built without `count` rather than copied and popped: a dict never shrinks, and
        # every subscriber keeps its arguments for as long as it stays.
        validated = {key: value for key, value in values if key != "count"}
        if isinstance(definition, Stream) and definition.principal_parameter is not None:
            validated[definition.principal_parameter] = principal
        count = values.count  # type: ignore[attr-defined]
        after: int | str | None = start.get(definition.name)
        if after is not None and definition.kind == "generated":
            after = int(after)
        selected.append(Selected(definition, validated, count, after))
    if errors:
        raise _invalid(errors)
    return Subscription(tuple(selected), start)


def available_streams(registry: Registry, access: Access | None) -> list[str]:
    """The streams a refusal may name: those the caller may see (all, without `access`); a
    keyed family as `family/<key>`."""
    return [
        f"{d.name}/<key>" if d.keyed else d.name
        for d in registry
        if access is None or access.sees(d)
    ]


def find_stream(
    registry: Registry,
    name: str,
    access: Access | None,
    available: Callable[[], list[str]] | None = None,
) -> Definition:
    """The stream `name` (a keyed family's topic for `family/key`), or the refusal: a 404
    for no such stream, or one the caller may not see, naming what `available()` gives (by
    default the streams it may see); a 422 for a key that is missing or that its type
    refuses."""
    definition = _find_streams(registry, [name], access, available)[0]
    if access is not None and not access.sees(definition):  # as unknown as a missing one
        raise unknown_stream(registry, [name], access, available=available)
    return definition


def unknown_stream(
    registry: Registry,
    names: Sequence[str],
    access: Access | None,
    reasons: Sequence[str] = (),
    available: Callable[[], list[str]] | None = None,
) -> RequestError:
    """The 404 for names that are no stream (or none the caller may see), naming those it
    may see, or those `available()` gives."""
    named = available() if available is not None else available_streams(registry, access)
    listed = ", ".join(repr(name[:200]) for name in names)
    why = f" ({'; '.join(reasons)})" if reasons else ""
    return RequestError(
        404,
        "unknown_stream",
        f"unknown stream {listed}{why}; available: {', '.join(named) or '(none)'}",
        unknown=list(names),
        available=named,
    )


def _find_streams(
    registry: Registry,
    names: Sequence[str],
    access: Access | None,
    available: Callable[[], list[str]] | None = None,
) -> list[Definition]:
    """The named streams, sorted by name and each once (`room/007` is `room/7`), or the
    refusal naming every unknown stream (404), else every bad key (422)."""
    found: dict[str, Definition] = {}
    unknown: list[str] = []
    reasons: list[str] = []
    bad_keys: list[dict[str, Any]] = []
    for name in names:
        try:
            definition = registry.lookup(name)
        except UnknownStream as exc:
            unknown.append(name)
            if exc.why:
                reasons.append(exc.why)
            continue
        except InvalidKey as exc:
            bad_keys.append({"stream": exc.stream, "key": exc.key, "message": exc.message})
            continue
        found[definition.name] = definition
    if unknown:
        raise unknown_stream(registry, unknown, access, reasons, available)
    if bad_keys:
        raise RequestError(
            422,
            "invalid_key",
            "; ".join(error["message"] for error in bad_keys),
            errors=bad_keys,
        )
    return sorted(found.values(), key=lambda s: s.name)


def _check_callers(streams: list[Definition], known: bool) -> None:
    """A 401 for a stream that serves only a known caller (it takes a `Principal`), if the
    caller is not known."""
    if known:
        return
    needing = [s.name for s in streams if isinstance(s, Stream) and s.principal_required]
    if needing:
        raise unauthorized(
            f"stream {', '.join(repr(n) for n in needing)} serves a signed-in caller only: "
            "send a token ('Authorization: Bearer <token>', the cookie 'hub_token', or the "
            "query parameter 'access_token'); without authorization on (--auth-key, "
            "--auth-public-key) no caller is ever known",
            token_sent=False,
        )


def _invalid(errors: list[dict[str, Any]]) -> RequestError:
    summary = "; ".join(f"{e['stream']}.{e['parameter']}: {e['message']}" for e in errors)
    return RequestError(422, "invalid_parameters", f"invalid parameters: {summary}", errors=errors)


def _route_parameters(
    streams: list[Definition], query: Iterable[tuple[str, str]]
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Send `?param=v` to every selected stream declaring it and `?stream.param=v` to one.

    Returns each stream's raw arguments, and the errors found on the way.
    """
    by_name = {s.name: s for s in streams}
    given: dict[tuple[str, str], list[str]] = {}  # (stream, param) -> values, scoped first
    shared: dict[str, list[str]] = {}
    errors: list[dict[str, Any]] = []
    for key, value in query:
        stream_name, dot, parameter = key.partition(".")
        if not dot:
            shared.setdefault(key, []).append(value)
            continue
        target = by_name.get(stream_name)
        if target is None:
            errors.append(
                {
                    "stream": stream_name,
                    "parameter": parameter,
                    "message": f"parameter {key!r} is scoped to stream {stream_name!r}, "
                    f"which is not selected (selected: {', '.join(by_name)})",
                    "input": value,
                }
            )
        elif parameter not in target.parameters.model_fields:
            errors.append(_undeclared(target, parameter, value))
        else:
            given.setdefault((stream_name, parameter), []).append(value)
    for parameter, values in shared.items():
        takers = [s for s in streams if parameter in s.parameters.model_fields]
        if not takers:
            accepted = sorted({p for s in streams for p in s.parameters.model_fields})
            errors.append(
                {
                    "stream": ",".join(by_name),
                    "parameter": parameter,
                    "message": f"no selected stream declares parameter {parameter!r}; "
                    f"accepted: {', '.join(accepted)}",
                    "input": values[-1],
                }
            )
        for taker in takers:
            # A scoped value wins over the shared one for its stream.
            given.setdefault((taker.name, parameter), values)
    arguments: dict[str, dict[str, Any]] = {s.name: {} for s in streams}
    for (stream_name, parameter), values in given.items():
        if parameter in by_name[stream_name].multi_valued:
            arguments[stream_name][parameter] = values
        elif len(values) > 1:
            errors.append(
                {
                    "stream": stream_name,
                    "parameter": parameter,
                    "message": f"given {len(values)} times; this parameter takes one value",
                    "input": values,
                }
            )
        else:
            arguments[stream_name][parameter] = values[0]
    return arguments, errors


def _undeclared(target: Definition, parameter: str, value: str) -> dict[str, Any]:
    return {
        "stream": target.name,
        "parameter": parameter,
        "message": f"stream {target.name!r} has no parameter {parameter!r}; "
        f"accepted: {', '.join(sorted(target.parameters.model_fields))}",
        "input": value,
    }


def _read_cursor(
    streams: list[Definition],
    last_event_id: str | None,
    check_position: Callable[[str], None] | None,
) -> dict[str, str | None]:
    if last_event_id is None:
        return {}
    if len(last_event_id) > MAX_CURSOR_LENGTH:
        raise RequestError(
            400,
            "malformed_cursor",
            f"the cursor is {len(last_event_id)} characters long; at most "
            f"{MAX_CURSOR_LENGTH} are accepted",
            cursor=_shortened(last_event_id),
            limit=MAX_CURSOR_LENGTH,
        )
    try:
        cursor = parse_cursor(last_event_id)
    except CursorError as exc:
        raise RequestError(400, "malformed_cursor", str(exc), cursor=last_event_id) from None
    start: dict[str, str | None] = {}
    for definition in streams:
        if definition.name not in cursor:
            continue
        position = cursor[definition.name]
        if position is not None:
            problem = _position_problem(definition, position, check_position)
            if problem:
                raise RequestError(
                    400,
                    "malformed_cursor",
                    f"position {_shortened(position)!r} of stream {definition.name!r} is not "
                    f"valid: {problem}",
                    cursor=_shortened(last_event_id, 1000),
                )
        start[definition.name] = position
    return start


def _position_problem(
    definition: Definition, position: str, check_position: Callable[[str], None] | None
) -> str | None:
    if isinstance(definition, Topic):
        if check_position is None:
            return None
        try:
            check_position(position)
        except ValueError as exc:
            return str(exc)
        return None
    # The length is checked first: int() of thousands of digits is slow, or refused.
    if position.isascii() and position.isdigit() and len(position) <= 19:
        if int(position) < _COUNT_LIMIT:
            return None
    return "expected a non-negative integer below 2**63, or '-' for nothing received yet"


def _shortened(text: str, keep: int = 100) -> str:
    return text if len(text) <= keep else f"{text[:keep]}... ({len(text)} characters)"
