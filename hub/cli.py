"""The `hub` command: `hub serve` runs the hub, `hub streams` prints the catalog, `hub tail`
and `hub publish` are its client in a terminal (hub/client.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import gc
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any

from . import __version__
from .brokers import BrokerUnavailable, broker_from_url
from .metrics import forget_process
from .registry import PluginError, Registry
from .runtime import load_auth
from .settings import Settings, SettingsError, comma_list

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hub",
        description="Many live event streams merged into one resumable SSE response.",
        epilog="Every option can also be set as HUB_<OPTION> in the environment, "
        "e.g. HUB_PORT=9000 or HUB_STREAMS=my_plugin.py,other.module.",
    )
    parser.add_argument("--version", action="version", version=f"hub {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    plugins = argparse.ArgumentParser(add_help=False)
    plugins.add_argument(
        "--streams",
        action="append",
        metavar="PLUGIN",
        help="load streams from a .py file, a folder of them, or a module (repeatable)",
    )
    plugins.add_argument(
        "--no-builtin-streams",
        dest="builtin_streams",
        action="store_false",
        default=None,
        help="do not load the built-in streams package",
    )
    plugins.add_argument(
        "--no-entry-points",
        dest="entry_points",
        action="store_false",
        default=None,
        help="do not load plugins declared by installed packages",
    )

    serve = commands.add_parser("serve", parents=[plugins], help="run the hub")
    serve.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind, 0 for any free one (default 8000)")
    serve.add_argument(
        "--broker",
        help="where topics live: memory:// (default) or redis://host:6379/0?prefix=hub:",
    )
    serve.add_argument(
        "--broker-wait",
        type=float,
        metavar="SECONDS",
        help="wait up to SECONDS for an unreachable broker at start (default 0: exit at once)",
    )
    serve.add_argument("--max-streams", type=int, help="streams per request (default 16)")
    serve.add_argument(
        "--max-topics",
        type=int,
        metavar="N",
        help="keyed topics (room/lobby) a memory broker holds; past it the idle one used least "
        "recently is dropped (default 100000)",
    )
    serve.add_argument(
        "--idle-ttl",
        type=float,
        metavar="SECONDS",
        help="an idle keyed topic in Redis expires after this, unless its max_age says "
        "(default 86400)",
    )
    serve.add_argument(
        "--buffer",
        type=int,
        help="live frames queued for a subscriber before it is cut off (default 1000)",
    )
    serve.add_argument(
        "--max-publish-bytes", type=int, help="largest POST body accepted (default 1048576)"
    )
    serve.add_argument(
        "--ping-interval",
        type=float,
        help="seconds of quiet before a keep-alive ping (default 15, 0 = off)",
    )
    serve.add_argument(
        "--retry", type=int, help="reconnection delay hinted to clients, ms (default 3000)"
    )
    serve.add_argument(
        "--send-timeout",
        type=float,
        help="drop a client that takes longer to accept a frame, s (default 10)",
    )
    serve.add_argument(
        "--cors-origin",
        dest="cors_origins",
        action="append",
        metavar="ORIGIN",
        help="let browser pages from ORIGIN subscribe (repeatable; '*' for any)",
    )
    serve.add_argument(
        "--shutdown-grace",
        type=float,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, end every stream with hub.shutdown and exit within this "
        "(default 5)",
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        metavar="SECONDS",
        help="a request head must arrive within this (default 10)",
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        metavar="SECONDS",
        help="a publish body must arrive within this (default 10)",
    )
    serve.add_argument(
        "--keep-alive",
        type=int,
        metavar="SECONDS",
        help="close an idle keep-alive connection after this (default 5)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="open streams in this process (default: from the open-file limit)",
    )
    serve.add_argument(
        "--max-connections-per-client",
        type=int,
        metavar="N",
        help="open streams from one client address (default 0: no limit)",
    )
    serve.add_argument(
        "--publish-rate",
        type=float,
        metavar="EVENTS",
        help="events a second one client address may publish, bursts of twice that "
        "(default 0: no limit)",
    )
    serve.add_argument(
        "--proxy-headers",
        action="store_true",
        default=None,
        help="behind a proxy: take the client address from X-Forwarded-For (off by default)",
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        type=comma_list,
        metavar="IPS",
        help="proxies trusted with --proxy-headers, comma-separated, '*' for any "
        "(default 127.0.0.1,::1)",
    )
    serve.add_argument(
        "--no-metrics",
        dest="metrics",
        action="store_false",
        default=None,
        help="serve no GET /metrics (Prometheus; on by default)",
    )
    serve.add_argument(
        "--no-page",
        dest="page",
        action="store_false",
        default=None,
        help="serve no live page at GET / (on by default)",
    )
    serve.add_argument(
        "--metrics-token",
        metavar="TOKEN",
        help="GET /metrics asks for 'Authorization: Bearer TOKEN' (env HUB_METRICS_TOKEN)",
    )
    auth = serve.add_argument_group(
        "authorization",
        "off unless a key is given; then every stream that is not public needs a token whose "
        'claim "hub" grants it ({"subscribe": [...], "publish": [...]}), and publishing '
        "always does",
    )
    auth.add_argument(
        "--auth-key",
        metavar="SECRET",
        help="verify HS256 tokens with this shared secret, 32 bytes or more (prefer the "
        "environment: HUB_AUTH_KEY, which ps does not show)",
    )
    auth.add_argument(
        "--auth-public-key",
        metavar="PEM_FILE",
        help="verify RS256 or ES256 tokens with this public key (PEM)",
    )
    auth.add_argument("--auth-audience", metavar="AUD", help="tokens must have this aud")
    auth.add_argument("--auth-issuer", metavar="ISS", help="tokens must have this iss")
    auth.add_argument(
        "--auth-leeway",
        type=float,
        metavar="SECONDS",
        help="clock skew allowed on exp and nbf (default 5)",
    )
    auth.add_argument(
        "--public",
        action="append",
        metavar="PATTERN",
        help="streams readable without a token: a name or a glob with * (repeatable)",
    )
    serve.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument(
        "--reload", action="store_true", help="restart when the code changes (development)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="hub processes on one port (needs a shared broker: --broker redis://...)",
    )

    listing = commands.add_parser("streams", parents=[plugins], help="print the catalog of streams")
    listing.add_argument("--json", action="store_true", help="print the catalog as JSON")

    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--url", help="the hub (default: $HUB_URL, else http://127.0.0.1:8000)")
    remote.add_argument(
        "--token",
        help="a token, sent as 'Authorization: Bearer' (prefer $HUB_TOKEN, which ps does not show)",
    )
    tail = commands.add_parser(
        "tail",
        parents=[remote],
        help="follow streams in the terminal",
        description="Follow streams: one line per event, reconnecting with the last id after "
        "a drop, waiting the hub's retry hint, doubled on each failure (at most 30 s).",
        epilog="Exit status: 0 at hub.end (every stream ended, e.g. -p count=3), 1 when the "
        "hub refuses the request, 2 for a usage error, 130 on Ctrl-C.",
    )
    tail.add_argument(
        "streams", metavar="STREAMS", help="the streams, comma-separated: echo,room/lobby"
    )
    tail.add_argument(
        "-p",
        "--param",
        dest="params",
        action="append",
        type=_param,
        default=[],
        metavar="NAME=VALUE",
        help="a stream parameter (repeatable): -p message=hi -p echo.interval=0.5 -p count=3",
    )
    tail.add_argument(
        "--json",
        action="store_true",
        help='one JSON object a line, {"event", "id", "data"}, for jq',
    )
    tail.add_argument(
        "--since", metavar="CURSOR", help="resume after this id (sent as Last-Event-ID)"
    )
    publish = commands.add_parser(
        "publish",
        parents=[remote],
        help="publish events to a topic",
        description="Publish to a topic. Without JSON, reads one event a line from stdin and "
        "sends what has arrived as one batch, as soon as the previous one is answered.",
        epilog="Exit status: 0, 1 when the hub refuses an event or cannot be reached, 2 for "
        "input that is not JSON.",
    )
    publish.add_argument("name", metavar="NAME", help="the topic: chat, room/lobby")
    publish.add_argument(
        "events",
        metavar="JSON",
        nargs="?",
        help="one event, or a JSON array of events (default: stdin, one event a line)",
    )
    return parser


def _param(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("tail", "publish"):
        from . import client  # httpx and rich, which nothing else needs

        if args.command == "tail":
            return client.tail(
                args.streams,
                args.params,
                url=args.url,
                token=args.token,
                as_json=args.json,
                since=args.since,
            )
        return client.publish(args.name, args.events, url=args.url, token=args.token)
    options = {
        key: value
        for key, value in vars(args).items()
        if key not in {"command", "reload", "json", "workers"} and value is not None
    }
    try:
        settings = Settings.from_env(**options)
        registry = Registry.discover(
            settings.streams, builtin=settings.builtin_streams, entry_points=settings.entry_points
        )
        if args.command == "serve":
            load_auth(settings)  # a key that cannot be used stops the start, with the reason
            asyncio.run(_reach(settings.broker, settings.broker_wait))
    except (SettingsError, PluginError, ValueError, BrokerUnavailable) as exc:
        print(f"hub: error: {exc}", file=sys.stderr)
        return 2
    if args.command == "streams":
        return _print_catalog(registry, as_json=args.json)
    if args.workers < 1:
        print("hub: error: --workers must be 1 or more", file=sys.stderr)
        return 2
    if args.workers > 1 and settings.broker.startswith("memory:"):
        print(
            "hub: error: --workers needs a broker the workers share, e.g. "
            "--broker redis://127.0.0.1:6379/0: with memory:// each would have its own topics",
            file=sys.stderr,
        )
        return 2
    return _serve(settings, registry, reload=args.reload, workers=args.workers)


async def _reach(url: str, wait: float = 0.0) -> None:
    """Fail now, with a clear message, if the broker cannot be reached; or keep trying for up
    to `wait` seconds, backing off, saying so once."""
    loop = asyncio.get_running_loop()
    deadline, delay = loop.time() + wait, 0.1
    last: BrokerUnavailable | None = None
    while True:
        broker = broker_from_url(url)
        # The first try takes what the broker's own timeout gives; later ones no longer than
        # the wait that is left.
        left = None if last is None else max(deadline - loop.time(), 0.1)
        try:
            async with asyncio.timeout(left):
                await broker.start()
            return
        except TimeoutError:
            assert last is not None
            raise last from None
        except BrokerUnavailable as exc:
            last = exc
            if loop.time() + delay > deadline:
                raise
            if delay == 0.1:
                print(f"hub: waiting up to {wait:g} s for the broker: {exc}", file=sys.stderr)
        finally:
            await broker.close()
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


def _serve(settings: Settings, registry: Registry, *, reload: bool, workers: int = 1) -> int:
    import uvicorn

    from .app import create_app
    from .limits import raise_open_file_limit

    # Before anything opens a file; the workers inherit it. The hub logs the figure at start.
    raise_open_file_limit()
    # The hub's own log (failing streams, cut-off clients) in uvicorn's format and level.
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["hub"] = {
        "handlers": ["default"],
        "level": settings.log_level.upper(),
        "propagate": False,
    }
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": log_config,
        # The hub's connections: head limits, aborts, a bounded shutdown (hub/protocol.py).
        "http": "hub.protocol:HubProtocol",
        # /ws: the same, for WebSockets. Protocol pings at the SSE ping interval, a pong due
        # within the send timeout; a message as large as a publish body; no compression,
        # which would cost every idle socket tens of kilobytes of zlib state.
        "ws": "hub.protocol:HubWebSocketProtocol",
        "ws_ping_interval": settings.ping_interval or None,
        "ws_ping_timeout": settings.send_timeout or None,
        "ws_max_size": settings.max_publish_bytes + 1024,
        "ws_per_message_deflate": False,
        "timeout_keep_alive": settings.keep_alive,
        # The hub aborts what is left before this; uvicorn's own cut is a last resort.
        "timeout_graceful_shutdown": settings.shutdown_grace,
        "proxy_headers": settings.proxy_headers,
        "forwarded_allow_ips": list(settings.forwarded_allow_ips),
    }
    if reload:
        os.environ.update(settings.to_env())
        uvicorn.run("hub.cli:app_from_env", factory=True, reload=True, **options)
        return 0
    # uvicorn re-raises the signal it stopped on once it has shut down, under the handlers
    # it found: these, so that a stop on SIGTERM or SIGINT exits with status 0.
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, _ignore)
    if workers > 1:
        # The workers import the app afresh, configured by environment.
        os.environ.update(settings.to_env())
        config = uvicorn.Config("hub.cli:app_from_env", factory=True, workers=workers, **options)
        with _metrics_directory(settings.metrics):
            _Supervisor(config, [config.bind_socket()], settings.shutdown_grace).run()
        return 0
    app = create_app(settings, registry)
    app.state.hub.on_shutdown.append(_exit_by_deadline)
    _freeze_what_lasts()
    uvicorn.Server(uvicorn.Config(app, **options)).run()
    return 0


def app_from_env() -> Any:
    """The app of a `hub serve` worker (or reloader): configured by `HUB_*`, and sure to exit
    within its shutdown grace."""
    from .app import create_app_from_env

    app = create_app_from_env()
    app.state.hub.on_shutdown.append(_exit_by_deadline)
    _freeze_what_lasts()
    return app


def _freeze_what_lasts() -> None:
    """Take what exists at start (modules, plugins, the app: it lives as long as the process)
    out of the garbage collector's full passes, which otherwise scan it each time and pause
    the loop for tens of milliseconds under a burst of allocations (a large publish). No
    collection first: it would cost the start-up tens of milliseconds, and what garbage is
    frozen with the rest is a few kilobytes, once."""
    gc.freeze()


def _ignore(sig: int, frame: FrameType | None) -> None:
    pass


def _exit_by_deadline(grace: float) -> None:
    """Make sure the process is gone within `grace` seconds of now, whatever holds it: the
    hub has ended every stream and aborts the connections left at its own deadline, so this
    is a last resort, for a plugin that ignores cancellation or a broker that hangs."""

    def watch() -> None:
        time.sleep(max(grace - 0.3, 0.1))
        logging.getLogger("hub").warning(
            "exiting: the shutdown grace of %g s is over (--shutdown-grace)", grace
        )
        logging.shutdown()
        os._exit(0)

    threading.Thread(target=watch, name="hub shutdown deadline", daemon=True).start()


@contextlib.contextmanager
def _metrics_directory(metrics: bool) -> Iterator[None]:
    """With several workers, the directory where prometheus-client's multiprocess mode keeps
    each worker's figures, so that a scrape of any worker counts them all: yours if
    PROMETHEUS_MULTIPROC_DIR is set, else one made for this run and removed after it."""
    from .metrics import MULTIPROCESS_DIR

    if not metrics or os.environ.get(MULTIPROCESS_DIR):
        yield
        return
    directory = tempfile.mkdtemp(prefix="hub-metrics-")
    os.environ[MULTIPROCESS_DIR] = directory
    try:
        yield
    finally:
        del os.environ[MULTIPROCESS_DIR]
        shutil.rmtree(directory, ignore_errors=True)


class _Supervisor:
    """uvicorn's supervisor of `--workers`, made prompt and bounded: on SIGTERM or SIGINT it
    stops listening at once (uvicorn's keeps its copy of the socket open until the workers
    are gone, so new connections queue with nobody to accept them) and signals the workers
    at once (uvicorn's looks every half second), then waits for them no longer than the
    grace, plus a second."""

    def __init__(self, config: Any, sockets: list[socket.socket], grace: float) -> None:
        from uvicorn.supervisors import Multiprocess

        class Supervisor(Multiprocess):
            def keep_subprocess_alive(self) -> None:
                before = [process.pid for process in self.processes]
                super().keep_subprocess_alive()
                after = {process.pid for process in self.processes}
                for pid in before:
                    if pid is not None and pid not in after:
                        forget_process(pid)  # a worker that died: its gauges stop counting

            def join_all(self) -> None:
                deadline = time.monotonic() + grace + 1
                for process in self.processes:
                    process.process.join(max(deadline - time.monotonic(), 0))
                    if process.process.is_alive():
                        process.kill()
                        process.process.join()

        self.supervisor = Supervisor(config, sockets=sockets)
        self.sockets = sockets
        for stop in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop, self._stop)

    def _stop(self, sig: int, frame: FrameType | None) -> None:
        for sock in self.sockets:
            sock.close()
        self.supervisor.should_exit.set()

    def run(self) -> None:
        self.supervisor.run()


def _print_catalog(registry: Registry, *, as_json: bool) -> int:
    from .app import describe

    infos = [describe(s) for s in registry]
    if as_json:
        print(json.dumps([info.model_dump() for info in infos], indent=2))
        return 0
    rows = [("NAME", "KIND", "PARAMETERS", "DESCRIPTION")]
    for info in infos:
        properties = info.parameters.get("properties", {})
        required = set(info.parameters.get("required", []))
        parameters = ", ".join(
            f"{name}{'*' if name in required else ''}" for name in properties if name != "count"
        )
        summary = info.description.splitlines()[0] if info.description else ""
        name = f"{info.name}/<key>" if info.keyed else info.name  # a topic per key
        rows.append((name, info.kind, parameters or "-", summary))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
            + "  "
            + row[3]
        )
    print("\n* required. Every stream also takes count=N (end after N events).")
    return 0
