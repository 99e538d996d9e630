"""The `hub` command: `hub serve` runs the hub, `hub streams` prints the catalog."""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import socket
import sys
from collections.abc import Sequence
from types import FrameType

from . import __version__
from .brokers import BrokerUnavailable, broker_from_url
from .registry import PluginError, Registry
from .settings import Settings, SettingsError

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
    while True:
        broker = broker_from_url(url)
        try:
            await broker.start()
            return
        except BrokerUnavailable as exc:
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

    host, port, log_level = settings.host, settings.port, settings.log_level
    # The hub's own log (failing streams, cut-off clients) in uvicorn's format and level.
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["hub"] = {
        "handlers": ["default"],
        "level": log_level.upper(),
        "propagate": False,
    }
    if reload or workers > 1:
        # The reloader and the workers import the app afresh in child processes, configured
        # by environment. uvicorn's supervisor, not ours, handles their SIGTERM: open streams
        # get a few seconds to end, then are closed.
        os.environ.update(settings.to_env())
        uvicorn.run(
            "hub.app:create_app_from_env",
            factory=True,
            reload=reload,
            workers=workers if not reload else None,
            timeout_graceful_shutdown=3,
            host=host,
            port=port,
            log_level=log_level,
            log_config=log_config,
        )
        return 0
    app = create_app(settings, registry)
    hub = app.state.hub
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, log_config=log_config)

    class Server(uvicorn.Server):
        loop: asyncio.AbstractEventLoop | None = None

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            self.loop = asyncio.get_running_loop()
            await super().startup(sockets)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # Open streams never end by themselves: end them, or uvicorn waits for them forever.
            if self.loop is not None and not self.should_exit:
                self.loop.call_soon_threadsafe(hub.close_responses)
            super().handle_exit(sig, frame)

    Server(config).run()
    return 0


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
        rows.append((info.name, info.kind, parameters or "-", summary))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
            + "  "
            + row[3]
        )
    print("\n* required. Every stream also takes count=N (end after N events).")
    return 0
