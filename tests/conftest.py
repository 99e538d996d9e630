from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright
from support import Reports

from hub.testing import HubServer

PLUGINS = Path(__file__).parent / "plugins"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def hub_server() -> Iterator[HubServer]:
    """One real hub for the suite: the built-in streams plus the test plugins."""
    with HubServer(str(PLUGINS), args=["--ping-interval", "0.5", "--retry", "1500"]) as server:
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
