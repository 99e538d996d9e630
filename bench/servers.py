"""The servers under test: the hub and the anchors, each in a child process on loopback.

Every server is started by this module and stopped by its own PID (SIGTERM, then SIGKILL after
a timeout); its output is drained into a short log kept for error messages. Children inherit
the open-file limit, which `bench.client.raise_nofile()` raises in the parent first.

`/proc` gives the figures about a server: CPU seconds (utime + stime) and resident memory
(VmRSS), summed over the process and its children (nginx's master and worker).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

BENCH = Path(__file__).resolve().parent
PROJECT = BENCH.parent
PLUGIN = BENCH / "streams_bench.py"
NCHAN_CONF = BENCH / "nchan.conf"
NCHAN_MODULES = (
    Path("/usr/lib/nginx/modules/ngx_nchan_module.so"),
    Path("/usr/share/nginx/modules/ngx_nchan_module.so"),
    Path("/etc/nginx/modules/ngx_nchan_module.so"),
)
READY = re.compile(r"Uvicorn running on https?://[^:]+:(\d+)")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ServerError(RuntimeError):
    """A server that would not start; the message ends with its output."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def hub_command() -> list[str]:
    """`hub` from this interpreter's environment (the console script), else `python -m hub`."""
    script = Path(sys.executable).parent / "hub"
    return [str(script)] if script.exists() else [sys.executable, "-m", "hub"]


def _environment() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(PROJECT) + (os.pathsep + path if path else ""),
    }


class Server:
    """A child process serving HTTP on 127.0.0.1:`port`."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        port: int,
        tmp: Path | None = None,
        env: dict[str, str] | None = None,
    ):
        self.name = name
        self.command = list(command)
        self.env = env or {}
        self.port = port
        self.tmp = tmp
        self.process: asyncio.subprocess.Process | None = None
        self.log: deque[str] = deque(maxlen=200)
        self.ready_line: asyncio.Future[int] | None = None
        self._drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def spawn(self) -> None:
        self.ready_line = asyncio.get_running_loop().create_future()
        self.process = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=PROJECT,
            env={**_environment(), **self.env},
            start_new_session=True,  # a Ctrl-C in the terminal reaches only the kit
        )
        self._drain = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.log.append(line)
            match = READY.search(line)
            if match and self.ready_line is not None and not self.ready_line.done():
                self.ready_line.set_result(int(match.group(1)))
        if self.ready_line is not None and not self.ready_line.done():
            self.ready_line.set_result(0)  # the output ended without the line

    def output(self) -> str:
        return "\n".join(self.log)

    async def wait_ready(self, timeout: float = 30.0, path: str | None = None) -> None:
        """Until the port accepts (and `path`, if given, answers 200)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.returncode is not None:
                raise ServerError(
                    f"{self.name} exited ({self.process.returncode}) at start:\n{self.output()}"
                )
            if await self._answers(path):
                return
            await asyncio.sleep(0.02)
        raise ServerError(f"{self.name} not ready within {timeout} s:\n{self.output()}")

    async def _answers(self, path: str | None) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            if path is None:
                return True
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
            )
            status = await asyncio.wait_for(reader.readline(), 5)
            return status.startswith(b"HTTP/1.1 200")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` s; then remove the temp dir."""
        process = self.process
        if process is not None and process.returncode is None:
            try:
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), timeout)
            except ProcessLookupError:
                pass
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._drain is not None:
            try:
                await asyncio.wait_for(self._drain, 5)
            except TimeoutError:
                self._drain.cancel()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def cpu_seconds(self) -> float:
        """utime + stime of the server and its children, from /proc."""
        return sum(_cpu_seconds(pid) for pid in _tree(self.pid))

    def rss_bytes(self) -> int:
        """VmRSS of the server and its children, from /proc."""
        return sum(_rss_bytes(pid) for pid in _tree(self.pid))


def _tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            pids.extend(_tree(int(child)))
    return pids


def _cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    # Fields 14 and 15 of stat(5), counted after the ")" that ends the command name.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _rss_bytes(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def _started(server: Server, path: str | None = None) -> Server:
    await server.spawn()
    try:
        await server.wait_ready(path=path)
    except BaseException:
        await server.stop()
        raise
    return server


# The HS256 key of the hub with authorization on (`start_hub_auth`), given by environment.
AUTH_KEY = secrets.token_urlsafe(32)


async def start_hub_auth() -> Server:
    """The hub as `start_hub` starts it, with authorization on: every stream needs a token."""
    return await start_hub(auth_key=AUTH_KEY)


async def start_hub(broker: str | None = None, auth_key: str | None = None) -> Server:
    """The hub with its built-in streams and the bench plugin, without an access log; on
    `broker` if given (else the embedded memory broker); with authorization on, given the
    `auth_key` of its tokens."""
    port = free_port()
    command = [
        *hub_command(),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--streams",
        str(PLUGIN),
        "--no-entry-points",
        "--log-level",
        "warning",
        *(["--broker", broker] if broker else []),
    ]
    env = {"HUB_AUTH_KEY": auth_key} if auth_key else None
    return await _started(Server("hub", command, port, env=env), "/health")


async def start_bare() -> Server:
    port = free_port()
    command = [sys.executable, "-m", "bench.anchors.bare", "--port", str(port)]
    return await _started(Server("bare ASGI", command, port))


async def start_sse() -> Server:
    port = free_port()
    command = [sys.executable, "-m", "bench.anchors.sse", "--port", str(port)]
    return await _started(Server("sse-starlette", command, port))


def nchan_missing() -> str | None:
    """Why nchan cannot run here, or None when nginx and its nchan module are installed."""
    if shutil.which("nginx") is None:
        return "nginx is not installed (apt-get install -y nginx libnginx-mod-nchan)"
    if _nchan_module() is None:
        return "the nchan module is not installed (apt-get install -y libnginx-mod-nchan)"
    return None


def _nchan_module() -> Path | None:
    return next((path for path in NCHAN_MODULES if path.exists()), None)


async def start_nchan() -> Server:
    """nginx + nchan in the foreground, from a temp prefix, with bench/nchan.conf."""
    missing = nchan_missing()
    if missing:
        raise ServerError(missing)
    nginx = shutil.which("nginx")
    assert nginx is not None
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="bench-nchan-"))
    tmp.chmod(0o755)  # the worker may run as another user
    conf = tmp / "nginx.conf"
    text = NCHAN_CONF.read_text().replace("__MODULE__", str(_nchan_module()))
    conf.write_text(text.replace("__PORT__", str(port)))
    command = [nginx, "-p", f"{tmp}/", "-c", str(conf), "-e", "stderr", "-g", "daemon off;"]
    return await _started(Server("nchan", command, port, tmp))


async def startup_time(command: Sequence[str], timeout: float = 60.0) -> float:
    """Seconds from spawning `command` to its "Uvicorn running on" line."""
    server = Server(command[0], command, 0)
    started = time.perf_counter()
    await server.spawn()
    try:
        assert server.ready_line is not None
        port = await asyncio.wait_for(asyncio.shield(server.ready_line), timeout)
        elapsed = time.perf_counter() - started
    except TimeoutError:
        port = 0
    finally:
        await server.stop()
    if not port:
        raise ServerError(f"no 'Uvicorn running on' line within {timeout} s:\n{server.output()}")
    return elapsed


async def nginx_version() -> str | None:
    nginx = shutil.which("nginx")
    if nginx is None:
        return None
    process = await asyncio.create_subprocess_exec(
        nginx, "-v", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await process.communicate()
    return out.decode().strip().split("/", 1)[-1]


async def redis_missing(url: str) -> str | None:
    """Why the cluster scenario cannot run against the Redis at `url`, or None if it can."""
    try:
        import redis.asyncio as redis
    except ImportError:
        return "redis-py is not installed (pip install -e '.[bench]')"
    client = redis.from_url(url, socket_connect_timeout=5)
    try:
        await client.ping()
    except Exception as exc:
        return f"no Redis at {url}: {exc}"
    finally:
        await client.aclose()
    return None


def redis_url_for_run(url: str) -> str:
    """`url` with a key prefix of its own, so that runs never meet each other's topics."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["prefix"] = f"bench-{secrets.token_hex(4)}:"
    return urlunsplit(parts._replace(query=urlencode(query)))


async def forget_run(url: str) -> None:
    """Delete the keys under the prefix of `url` (a `redis_url_for_run`)."""
    import redis.asyncio as redis

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    prefix = query.pop("prefix")
    client = redis.from_url(urlunsplit(parts._replace(query=urlencode(query))))
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
