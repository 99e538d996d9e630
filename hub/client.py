"""The hub from a terminal: `hub tail` follows a subscription, `hub publish` feeds a topic.

Imported only by those two commands, so that `hub serve` never pays for httpx and rich.

`hub tail` reconnects as a browser's `EventSource` does, and a little more patiently:
- A drop (the response ends without `hub.end`: the hub stopped with `hub.shutdown`, cut the
  client off with `hub.overflow`, the token ran out with `hub.expired`; or the connection
  broke) reconnects with `Last-Event-ID`, the last id seen, so every stream resumes where it
  stopped; `--since` gives the first request's.
- The wait is the hub's `retry:` hint (1 s until one arrives), doubled on each attempt that
  fails, at most 30 s; back to the hint once a response has given its starting cursor.
- A refusal for load (429 or 503, waiting at least their `Retry-After`, or a 200 carrying
  `hub.busy`), a 5xx from a proxy, and a hub it cannot reach, at the start too (it may be
  starting), are retried the same way for as long as it takes, each wait one dim line on
  stderr. Ctrl-C stops it.
- Any other refusal (unknown stream, bad parameter, no token...) is final: the hub's message
  and code on stderr, exit status 1.

Exit status of `hub tail`: 0 at `hub.end` (every stream ended, e.g. by `count`), 1 for a
refusal, 2 for a usage error, 130 on Ctrl-C.

`hub publish` sends its JSON argument as one request. From stdin, it sends what has arrived
as one batch (at most 500 events or 512 KiB) as soon as the answer to the previous batch is
in: a file goes out in a few large requests, a pipe that stays open a line at a time as they
come. A batch is published all or none. 429 and 503 are tried again, 5 times at most. Exit
status: 0, 1 for a refusal or an unreachable hub, 2 for input that is not JSON (naming its
line: the lines before it are published, none after), 130 on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, TextIO
from urllib.parse import quote

import httpx
from httpx_sse import connect_sse
from rich.console import Console
from rich.text import Text

__all__ = ["DEFAULT_URL", "publish", "tail"]

DEFAULT_URL = "http://127.0.0.1:8000"  # where `hub serve` listens by default

# A quiet stream gets a ping every 15 s by default (within 22 s): a minute without a byte is
# a dead connection.
_TIMEOUT = httpx.Timeout(10.0, read=60.0)
_MAX_DELAY = 30.0
_BATCH_EVENTS = 500
_BATCH_BYTES = 512 * 1024  # half the hub's default body limit
_PUBLISH_TRIES = 5
# Stream names get one of these, chosen by the name's checksum, so a stream keeps its colour
# from one run to the next. Yellow and red are the control events'.
_PALETTE = (
    "cyan",
    "magenta",
    "green",
    "blue",
    "bright_cyan",
    "bright_magenta",
    "bright_green",
    "bright_blue",
)
_CONTROL_STYLES = {
    "hub.error": "bold red",
    "hub.expired": "bold red",
    "hub.gap": "bold yellow",
    "hub.overflow": "bold yellow",
    "hub.busy": "bold yellow",
    "hub.shutdown": "yellow",
    "hub.end": "dim",
}
# Why a response that ended without `hub.end` ended, after its last control event.
_ENDINGS = {
    "hub.shutdown": "the hub is shutting down",
    "hub.overflow": "cut off for falling behind",
    "hub.expired": "the token has expired",
}


def tail(
    streams: str,
    params: Sequence[tuple[str, str]] = (),
    *,
    url: str | None = None,
    token: str | None = None,
    as_json: bool = False,
    since: str | None = None,
) -> int:
    """Follow `streams` until `hub.end`, a refusal or Ctrl-C; the exit status."""
    names = [name.strip() for name in streams.split(",") if name.strip()]
    follower = _Follower(
        _base_url(url),
        [("streams", streams), *params],
        _headers(token),
        _JsonLines() if as_json else _ReadableLines(names),
        since,
    )
    try:
        return follower.run()
    except KeyboardInterrupt:
        if follower.last_id and not as_json:
            follower.output.notice(f"resume with --since '{follower.last_id}'")
        return 130
    except BrokenPipeError:  # the reader went away: `hub tail ... | head`
        _silence_stdout()
        return 141


class _Retry(Exception):
    def __init__(self, reason: str, wait: float = 0.0) -> None:
        super().__init__(reason)
        self.reason, self.wait = reason, wait


class _Refused(Exception):
    pass


class _Follower:
    def __init__(
        self,
        url: str,
        query: list[tuple[str, str]],
        headers: dict[str, str],
        output: _ReadableLines | _JsonLines,
        since: str | None,
    ) -> None:
        self.url, self.query, self.headers, self.output = url, query, headers, output
        self.last_id = since or ""
        self.retry = 1.0  # seconds, until the hub hints
        self.failures = 0

    def run(self) -> int:
        with httpx.Client(base_url=self.url, timeout=_TIMEOUT, headers=self.headers) as client:
            while True:
                try:
                    self._follow(client)
                    return 0
                except _Refused as exc:
                    print(f"hub tail: error: {exc}", file=sys.stderr)
                    return 1
                except _Retry as exc:
                    reason, at_least = exc.reason, exc.wait
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    reason, at_least = f"cannot connect to {self.url}: {exc}", 0.0
                except httpx.ReadTimeout:
                    reason, at_least = f"nothing received for {_TIMEOUT.read:g} s", 0.0
                except httpx.TransportError as exc:
                    reason, at_least = f"connection lost: {exc or type(exc).__name__}", 0.0
                self.failures += 1
                delay = min(max(self.retry * 2 ** (self.failures - 1), at_least), _MAX_DELAY)
                self.output.notice(f"reconnecting in {delay:.1f} s ({reason})")
                time.sleep(delay)

    def _follow(self, client: httpx.Client) -> None:
        """One request: returns at `hub.end`, raises `_Retry` when it should be made again."""
        headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
        with connect_sse(client, "GET", "/events", params=self.query, headers=headers) as source:
            response = source.response
            if response.status_code != 200:
                response.read()
                raise _refusal(response)
            kind = response.headers.get("content-type", "").partition(";")[0]
            if kind != "text/event-stream":
                raise _Refused(f"{response.url} answered {kind or 'no content type'}, not events")
            ending = "the response ended"
            for sse in source.iter_sse():
                if sse.retry is not None:
                    self.retry = max(sse.retry / 1000, 0.1)
                control = sse.event.startswith("hub.")
                if sse.id and not control:
                    # The first is the id-only frame with the starting cursor: open for good.
                    self.last_id, self.failures = sse.id, 0
                if not sse.data:  # the retry hint, the starting cursor
                    continue
                self.output.event(sse.event, None if control else sse.id, sse.data)
                if sse.event == "hub.end":
                    return
                if sse.event == "hub.busy":
                    busy = _json_object(sse.data)
                    wait = _seconds(busy.get("retry_after"))
                    raise _Retry(f"busy: {busy.get('message', sse.data)}", wait)
                if control:
                    ending = _ENDINGS.get(sse.event, ending)
        raise _Retry(ending)


def _refusal(response: httpx.Response) -> Exception:
    status = response.status_code
    code, message = _error_of(response)
    if status in (429, 503) or status >= 500:
        return _Retry(f"{status} {code}: {message}", _seconds(response.headers.get("retry-after")))
    return _Refused(f"{message} ({status} {code})")


def _error_of(response: httpx.Response) -> tuple[str, str]:
    """The `code` and `message` of the hub's JSON error; a status and the text of any other."""
    try:
        error = response.json()["error"]
        return str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        text = " ".join(response.text.split())[:200]
        return response.reason_phrase.lower().replace(" ", "_"), text or response.reason_phrase


def _json_object(data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _seconds(value: Any) -> float:
    """A `Retry-After` or a `retry_after`, in seconds; 0 for anything else."""
    try:
        seconds = float(value or 0)
    except (TypeError, ValueError):  # an HTTP date: the backoff will do
        return 0.0
    return seconds if 0 < seconds < float("inf") else 0.0


class _ReadableLines:
    """Each event on a line: when it arrived, its stream in that stream's colour, its data as
    `key=value` pairs. Colours only on a terminal (rich decides; NO_COLOR is honoured)."""

    def __init__(self, names: Sequence[str]) -> None:
        # soft_wrap: a long event stays one line, also in a pipe, where rich would cut at 80.
        self.out = Console(soft_wrap=True, highlight=False)
        self.err = Console(stderr=True, soft_wrap=True, highlight=False)
        self.width = min(max((len(name) for name in names), default=0), 24)

    def event(self, name: str, cursor: str | None, data: str) -> None:
        line = Text()
        line.append(_now() + "  ", style="dim")
        style = _CONTROL_STYLES.get(name, "bold") if name.startswith("hub.") else None
        line.append(name.ljust(self.width), style=style or _colour(name))
        line.append("  ")
        line.append(_readable(data), style=style)
        self.out.print(line)

    def notice(self, message: str) -> None:
        self.err.print(Text(message, style="dim"))


class _JsonLines:
    """Each event as one JSON object on a line, for `jq`: no colours, flushed at once."""

    def event(self, name: str, cursor: str | None, data: str) -> None:
        try:
            value: Any = json.loads(data)
        except ValueError:
            value = data
        sys.stdout.write(json.dumps({"event": name, "id": cursor, "data": value}) + "\n")
        sys.stdout.flush()

    def notice(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)


def _now() -> str:
    return datetime.now().strftime("%H:%M:%S.%f")[:-3]


def _colour(name: str) -> str:
    return _PALETTE[zlib.crc32(name.encode()) % len(_PALETTE)]


def _readable(data: str) -> str:
    try:
        value = json.loads(data)
    except ValueError:
        return data if data.isprintable() else _compact(data)
    if isinstance(value, dict) and value:
        return " ".join(f"{_word(key)}={_word(item)}" for key, item in value.items())
    return _compact(value)


def _word(value: Any) -> str:
    """A string as it is if it reads as one word, else (and any other value) as JSON, whose
    escapes also keep control characters from reaching the terminal."""
    if isinstance(value, str) and value.isprintable() and value:
        if not any(char.isspace() or char in '"=\\' for char in value):
            return value
    return _compact(value)


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def publish(
    name: str,
    events: str | None = None,
    *,
    url: str | None = None,
    token: str | None = None,
    stdin: TextIO | None = None,
) -> int:
    """Publish `events` (JSON text), or stdin's lines; the exit status."""
    base = _base_url(url)
    path = f"/streams/{quote(name, safe='/')}/events"
    try:
        with httpx.Client(base_url=base, timeout=_TIMEOUT, headers=_headers(token)) as client:
            if events is not None:
                try:
                    _loads(events)
                except ValueError as exc:
                    print(
                        f"hub publish: error: the JSON argument is not JSON: {exc}", file=sys.stderr
                    )
                    return 2
                return _post(client, path, events.encode(), lines=None)
            stdin = stdin or sys.stdin
            if stdin.isatty():
                print("hub publish: one JSON event a line; Ctrl-D to end", file=sys.stderr)
            for batch in _batches(stdin):
                valid: list[tuple[int, str]] = []
                for number, text in batch:
                    try:
                        _loads(text)
                    except ValueError as exc:
                        status = _send(client, path, valid) if valid else 0
                        if status == 0:
                            print(
                                f"hub publish: error: line {number} is not JSON: {exc}",
                                file=sys.stderr,
                            )
                            status = 2
                        return status
                    valid.append((number, text))
                status = _send(client, path, valid)
                if status:
                    return status
            return 0
    except UnicodeDecodeError as exc:
        print(f"hub publish: error: stdin is not text: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _send(client: httpx.Client, path: str, batch: list[tuple[int, str]]) -> int:
    body = ("[" + ",".join(text for _, text in batch) + "]").encode()
    return _post(client, path, body, lines=[number for number, _ in batch])


def _post(client: httpx.Client, path: str, body: bytes, *, lines: list[int] | None) -> int:
    for attempt in range(1, _PUBLISH_TRIES + 1):
        try:
            response = client.post(path, content=body, headers={"Content-Type": "application/json"})
        except httpx.TransportError as exc:
            print(f"hub publish: error: cannot reach {client.base_url}: {exc}", file=sys.stderr)
            return 1
        if response.status_code not in (429, 503) or attempt == _PUBLISH_TRIES:
            break
        code, message = _error_of(response)
        wait = min(max(_seconds(response.headers.get("retry-after")), 2.0 ** (attempt - 1)), 30)
        print(
            f"hub publish: trying again in {wait:.1f} s ({response.status_code} {code}: {message})",
            file=sys.stderr,
        )
        time.sleep(wait)
    if response.status_code != 201:
        code, message = _error_of(response)
        print(f"hub publish: error: {message} ({response.status_code} {code})", file=sys.stderr)
        error = _json_object(response.text).get("error")
        errors = error.get("errors") if isinstance(error, dict) else None
        if lines is not None and isinstance(errors, list):  # the line of each refused event
            for error in errors:
                index = error.get("index") if isinstance(error, dict) else None
                if isinstance(index, int) and 0 <= index < len(lines):
                    field = error.get("field") or "(event)"
                    print(
                        f"  line {lines[index]}: {field}: {error.get('message')}", file=sys.stderr
                    )
        return 1
    answer = _json_object(response.text)
    for position, cursor in zip(answer.get("positions", []), answer.get("ids", []), strict=False):
        print(f"{position} {cursor}", flush=True)
    return 0


def _batches(stdin: TextIO) -> Iterator[list[tuple[int, str]]]:
    """The non-blank lines of `stdin`, numbered, in batches of what has arrived meanwhile."""
    arrived: queue.Queue[tuple[int, str] | UnicodeDecodeError | None]
    arrived = queue.Queue(maxsize=2 * _BATCH_EVENTS)

    def read() -> None:
        try:
            for number, line in enumerate(stdin, 1):
                arrived.put((number, line))
        except UnicodeDecodeError as exc:
            arrived.put(exc)
        arrived.put(None)

    threading.Thread(target=read, name="hub publish stdin", daemon=True).start()
    while True:
        batch: list[tuple[int, str]] = []
        size = 0
        item = arrived.get()  # wait for the first line of a batch
        while item is not None:
            if isinstance(item, UnicodeDecodeError):
                raise item
            number, line = item
            if line.strip():
                batch.append((number, line.strip()))
                size += len(line)
            if len(batch) >= _BATCH_EVENTS or size >= _BATCH_BYTES:
                break
            try:
                item = arrived.get_nowait()
            except queue.Empty:
                if batch:
                    break
                item = arrived.get()
        if batch:
            yield batch
        if item is None:
            return


def _loads(text: str) -> Any:
    """JSON as the hub accepts it: NaN and Infinity are not JSON."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _base_url(url: str | None) -> str:
    return (url or os.environ.get("HUB_URL") or DEFAULT_URL).rstrip("/")


def _headers(token: str | None) -> dict[str, str]:
    token = token or os.environ.get("HUB_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's own flush at exit raises nothing more."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
