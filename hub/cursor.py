"""Cursors: the positions of every stream of a subscription, carried as the SSE `id:`.

Form: `name:position` for every selected stream, sorted by name, joined by `,`; names are
percent-quoted where needed; a stream with nothing delivered yet has the position `-`.
A reader splits each part at its first `:`. The same selection always yields the same form,
so a browser's `Last-Event-ID` resumes all of its streams at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote

__all__ = [
    "NOTHING_YET",
    "CursorError",
    "CursorWriter",
    "format_cursor",
    "parse_cursor",
    "quote_name",
]

NOTHING_YET = "-"


def quote_name(name: str) -> str:
    """A stream name as it appears in a cursor: as it is, since names (`echo`, `room/lobby`)
    hold nothing that needs quoting; anything else would be percent-quoted."""
    return quote(name, safe="/")


class CursorError(ValueError):
    """A cursor (Last-Event-ID) that cannot be read."""


def format_cursor(positions: Mapping[str, str | None]) -> str:
    return ",".join(
        f"{quote_name(name)}:{NOTHING_YET if position is None else position}"
        for name, position in sorted(positions.items())
    )


def parse_cursor(text: str) -> dict[str, str | None]:
    """Read a cursor into `{stream: position}`; `None` where nothing was delivered yet.

    An empty or blank text is no cursor at all. Positions are not interpreted here: each
    kind of stream checks its own.
    """
    positions: dict[str, str | None] = {}
    if not text.strip():
        return positions
    for part in text.split(","):
        name, colon, position = part.strip().partition(":")
        name = unquote(name)
        if not colon or not name or not position:
            raise CursorError(
                f"malformed cursor part {part!r}: expected 'stream:position' "
                f"(parts joined by ','), e.g. 'echo:3,reverse_echo:-'"
            )
        if name in positions:
            raise CursorError(f"malformed cursor: stream {name!r} appears twice")
        positions[name] = None if position == NOTHING_YET else position
    return positions


class CursorWriter:
    """Makes the cursor after each event of a subscription, cheaply: one slot changes."""

    __slots__ = ("names", "_prefixes", "_parts")

    def __init__(self, names: Iterable[str], start: Mapping[str, str | None]) -> None:
        self.names = sorted(names)
        self._prefixes = [quote_name(name) + ":" for name in self.names]
        self._parts = [
            prefix + (start.get(name) or NOTHING_YET)
            for prefix, name in zip(self._prefixes, self.names, strict=True)
        ]

    def index(self, name: str) -> int:
        return self.names.index(name)

    def advance(self, index: int, position: str) -> str:
        self._parts[index] = self._prefixes[index] + position
        return ",".join(self._parts)

    def current(self) -> str:
        return ",".join(self._parts)
