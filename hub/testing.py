"""Helpers for testing streams with pytest, for plugin authors and for the hub's own suite.

- `collect(...)` / `acollect(...)`: the first N events of a selection, with their ids, run
  in-process through the same pipeline as `GET /events` (validation, merge, framing). A
  stream that fails (`hub.error`) raises `StreamError`, so that a test cannot pass on a
  broken stream; `hub.end` is left out. With `control=True` every control event (`hub.gap`,
  `hub.error`, `hub.end`, ...) is returned among the events instead, and nothing is raised.
- `serve(...)`: a real hub in a child process on a free loopback port, for end-to-end tests
  with any HTTP client. A relative plugin path is looked for in the working directory, then
  beside the file that calls `serve`.
- `SSEParser` / `parse_events(...)`: read SSE bytes back into events.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from .auth import Principal
from .events import CONTROL_PREFIX
from .merge import Drop
from .registry import Definition, Registry, names_a_path
from .runtime import Hub
from .subscription import parse_subscription, query_pairs

__all__ = [
    "HubServer",
    "ReceivedEvent",
    "SSEParser",
    "StreamError",
    "acollect",
    "collect",
    "parse_events",
    "serve",
]


@dataclass(frozen=True)
class ReceivedEvent:
    """One dispatched SSE event as a reader sees it."""

    event: str
    data: str
    id: str | None

    def json(self) -> Any:
        return json.loads(self.data)


class StreamError(Exception):
    """A stream of a collected selection failed: it ended with `hub.error`. `stream` names
    it, `error` is the error the hub reported, `events` what was collected before it."""

    def __init__(self, stream: str, error: str, events: list[ReceivedEvent]) -> None:
        super().__init__(f"stream {stream!r} failed: {error}")
        self.stream = stream
        self.error = error
        self.events = events


class SSEParser:
    """An incremental reader of `text/event-stream`, following the WHATWG rules."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._pending = ""
        self._after_cr = False
        self._event = ""
        self._data: list[str] = []
        self.last_event_id: str | None = None
        self.retry: int | None = None
        self.comments: list[str] = []

    def feed(self, chunk: bytes | str) -> list[ReceivedEvent]:
        text = self._decoder.decode(chunk) if isinstance(chunk, bytes) else chunk
        if self._after_cr and text.startswith("\n"):
            text = text[1:]  # the "\n" of a "\r\n" split across two chunks
        self._after_cr = text.endswith("\r")
        lines = re.split(r"\r\n|\r|\n", self._pending + text)
        self._pending = lines.pop()  # no line end yet
        dispatched = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                dispatched.append(event)
        return dispatched

    def _line(self, line: str) -> ReceivedEvent | None:
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = ReceivedEvent(
                self._event or "message", "\n".join(self._data), self.last_event_id
            )
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            self.comments.append(line[1:].removeprefix(" "))
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        elif name == "retry" and value.isdigit():
            self.retry = int(value)
        return None


def parse_events(raw: bytes | str) -> list[ReceivedEvent]:
    """Every event in a complete piece of SSE text."""
    return SSEParser().feed(raw)


async def acollect(
    streams: str | Definition | Sequence[str | Definition],
    limit: int,
    *,
    params: Mapping[str, Any] | Iterable[tuple[str, Any]] = (),
    last_event_id: str | None = None,
    hub: Hub | None = None,
    registry: Registry | None = None,
    plugins: Sequence[str] = (),
    timeout: float = 10.0,
    principal: Principal | Mapping[str, Any] | None = None,
    control: bool = False,
) -> list[ReceivedEvent]:
    """The first `limit` events of a selection, in-process.

    `streams` names streams ("echo,reverse_echo", a keyed topic as "room/lobby") or passes
    stream and topic objects directly; `params` are the query parameters
    (`{"message": "hi", "echo.interval": 0}`).
    Pass a started `hub` to publish to its topics while collecting; without one, a hub is
    started for the call. Ends early if every stream ends; raises `TimeoutError` if `limit`
    events take over `timeout` s, and `hub.subscription.RequestError` for a request the hub
    would refuse.

    A stream that fails within the first `limit` events raises `StreamError`; the control
    events `hub.gap` and `hub.overflow` are among the events, `hub.end` is not. With
    `control=True`, every control event is among the events (`hub.error` and `hub.end`
    included) and counts towards `limit`, and nothing is raised for a failed stream.

    `principal` is the caller, as a `Principal` or as a token's claims
    (`{"sub": "ana", "hub": {"subscribe": ["*"]}}`): a stream that takes a `Principal` gets
    it, and a `hub` with authorization on checks its grants as for a request.
    """
    selection = [streams] if isinstance(streams, (str, Definition)) else list(streams)
    if hub is not None:
        registry = hub.registry
    elif registry is None:
        registry = Registry.discover(plugins)
    names: list[str] = []
    for item in selection:
        if isinstance(item, Definition):
            registry.add(item)
            names.append(item.name)
        else:
            names += [name.strip() for name in item.split(",") if name.strip()]
    query = query_pairs(params)
    if hub is None:
        async with Hub(registry) as own:
            return await acollect(
                names,
                limit,
                params=query,
                last_event_id=last_event_id,
                hub=own,
                timeout=timeout,
                principal=principal,
                control=control,
            )
    if principal is not None and not isinstance(principal, Principal):
        principal = Principal.from_claims(principal)
    subscription = parse_subscription(
        registry,
        list(dict.fromkeys(names)),
        query,
        last_event_id,
        max_streams=len(names) or 1,  # a test may select more than a request may
        check_position=hub.broker.check_position,
        access=hub.auth.access_for(principal),
    )
    parser = SSEParser()
    received: list[ReceivedEvent] = []
    if limit <= 0:
        return received
    try:
        async with asyncio.timeout(timeout):
            async with aclosing(hub.frames(subscription)) as subscribed:
                async for frame in subscribed:
                    if _take(parser.feed(frame), received, limit, control):
                        break
    except TimeoutError:
        raise TimeoutError(
            f"{len(received)} of {limit} events from {','.join(names)} within {timeout} s"
        ) from None
    except Drop:
        pass  # cut off for falling behind: its last frame, hub.overflow, is in `received`
    return received[:limit]


def _take(
    events: list[ReceivedEvent], received: list[ReceivedEvent], limit: int, control: bool
) -> bool:
    """Add `events` to `received`, in order, up to `limit`; whether `limit` is reached."""
    for event in events:
        if not control and event.event.startswith(CONTROL_PREFIX):
            if event.event == "hub.end":
                continue  # the response ends after it: nothing to collect
            if event.event == "hub.error":
                data = event.json()
                raise StreamError(data.get("stream", "?"), data.get("error", ""), list(received))
        received.append(event)
        if len(received) >= limit:
            return True
    return False


def collect(
    streams: str | Definition | Sequence[str | Definition], limit: int, **options: Any
) -> list[ReceivedEvent]:
    """`acollect` for synchronous tests."""
    return asyncio.run(acollect(streams, limit, **options))


_READY = re.compile(r"Uvicorn running on (https?)://(\S+):(\d+)")


class HubServer:
    """A real `hub serve` in a child process, on a free loopback port; use as a context manager."""

    def __init__(
        self,
        *plugins: str,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.command = [sys.executable, "-m", "hub", "serve", "--host", "127.0.0.1", "--port", "0"]
        for plugin in plugins:
            self.command += ["--streams", plugin]
        self.command += list(args)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.startup_timeout = startup_timeout
        self.lines: list[str] = []
        self.url = ""
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        self._ready = threading.Event()
        self._reader = threading.Thread()

    @property
    def pid(self) -> int:
        assert self.process is not None, "the server is not started"
        return self.process.pid

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def start(self) -> HubServer:
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(self.startup_timeout):
            self.stop()
            raise RuntimeError(f"hub did not start within {self.startup_timeout} s:\n{self.output}")
        if not self.url:
            self.stop()
            raise RuntimeError(
                f"hub exited at start-up ({self.process.returncode}):\n{self.output}"
            )
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        # Ready once the URL is known and every worker has started its app: with --workers
        # the parent binds the port, but only the workers listen on it.
        workers = (
            int(self.command[self.command.index("--workers") + 1])
            if "--workers" in self.command
            else 1
        )
        started = 0
        for line in self.process.stdout:
            self.lines.append(line)
            match = _READY.search(line)
            if match and not self.url:
                self.port = int(match.group(3))
                self.url = f"{match.group(1)}://127.0.0.1:{self.port}"
            if "Application startup complete" in line:
                started += 1
            if self.url and started >= workers:
                self._ready.set()
        self.process.wait()
        self._ready.set()  # ended before (or after) it was ready: wake any waiter

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after `timeout` s; returns the exit code (0 for a clean stop,
        which `hub serve` makes within its `--shutdown-grace`)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the process to end (SIGKILL after `timeout` s) and collect its output."""
        assert self.process is not None
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    @property
    def stopped_gracefully(self) -> bool:
        return "Application shutdown complete" in self.output

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def serve(
    *plugins: str, args: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> HubServer:
    """`with serve("my_plugin.py") as hub: httpx.get(hub.url + "/streams")`.

    A relative plugin path is looked for in the working directory, then in the directory of
    the file that calls `serve` (a test beside its plugin finds it from anywhere); one found
    in neither raises `FileNotFoundError` naming both places. Module names go as they are.
    """
    caller = sys._getframe(1).f_code.co_filename
    beside = Path(caller).parent if Path(caller).is_file() else None
    return HubServer(*(_find_plugin(plugin, beside) for plugin in plugins), args=args, env=env)


def _find_plugin(plugin: str, beside: Path | None) -> str:
    """The plugin as the hub (in the working directory) can find it."""
    path = Path(plugin)
    if path.is_absolute() or path.exists():
        return plugin
    if beside is not None and (beside / path).exists():
        return str(beside / path)
    if not names_a_path(plugin):
        return plugin  # a module name, imported by the hub
    looked = [str(Path.cwd() / path) + " (the working directory)"]
    if beside is not None:
        looked.append(str(beside / path) + " (beside the calling file)")
    raise FileNotFoundError(f"plugin {plugin!r} not found; looked in: {', '.join(looked)}")
