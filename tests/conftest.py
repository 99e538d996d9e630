from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Reports

from hub.testing import HubServer

PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def hub_server() -> Iterator[HubServer]:
    """One real hub for the suite: the built-in streams plus the test plugins."""
    with HubServer(str(PLUGINS), args=["--ping-interval", "0.5", "--retry", "1500"]) as server:
        yield server


@pytest.fixture
def reports() -> Iterator[Reports]:
    """A loopback listener for the test plugins' open/close reports."""
    listener = Reports()
    yield listener
    listener.close()
