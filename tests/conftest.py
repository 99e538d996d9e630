from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx._transports.default
import pytest
from playwright.sync_api import Browser, sync_playwright
from support import Reports

from hub.testing import HubServer

PLUGINS = Path(__file__).parent / "plugins"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True, scope="session")
def one_tls_context() -> Iterator[None]:
    """httpx makes every client a TLS context of its own, loading certifi's bundle (25 ms),
    even one that speaks plain HTTP to a hub on loopback: the suite makes some 700. Make the
    default one once, and give it to every client that asks for the default."""
    default = httpx.create_ssl_context()
    create = httpx.create_ssl_context  # what the transports call, by that name

    def shared(
        verify: ssl.SSLContext | str | bool = True, cert: object = None, trust_env: bool = True
    ) -> ssl.SSLContext:
        if verify is True and cert is None and trust_env:
            return default
        return create(verify=verify, cert=cert, trust_env=trust_env)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(httpx._transports.default, "create_ssl_context", shared)
        yield


@pytest.fixture(scope="session")
def hub_server() -> Iterator[HubServer]:
    """One real hub for the suite: the built-in streams plus the test plugins."""
    with HubServer(str(PLUGINS), args=["--ping-interval", "0.5", "--retry", "1500"]) as server:
        yield server


@pytest.fixture(scope="session")
def cors_hub() -> Iterator[HubServer]:
    """A hub that lets pages from https://app.example subscribe and publish (CORS)."""
    with HubServer(args=["--cors-origin", "https://app.example"]) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless, driven by Playwright (which never downloads one here).
    A module's own: Playwright's sync API holds an event loop in this thread while it runs,
    and every asyncio test after it would find that loop running."""
    assert shutil.which(CHROMIUM), "chromium is needed: apt-get install chromium"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def reports() -> Iterator[Reports]:
    """A loopback listener for the test plugins' open/close reports."""
    listener = Reports()
    yield listener
    listener.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """REDIS_URL if set; else a throwaway redis-server on a free port, stopped afterwards."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    binary = shutil.which("redis-server")
    assert binary, "redis-server is needed: install it (Debian: apt-get install redis-server)"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:  # wait for it to say it is ready, not for a timer
        if "Ready to accept connections" in line:
            break
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(10)
    process.stdout.close()
