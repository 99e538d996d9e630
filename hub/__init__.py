"""A multi-stream event hub: typed streams merged into one resumable SSE response."""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

from .auth import Principal
from .events import Event, ReceivedAt
from .registry import LastPosition, PluginError, Registry, Stream, Topic, stream, topic
from .runtime import Hub, publish
from .settings import Settings

if TYPE_CHECKING:
    from .app import create_app
    from .embed import subscribe

__all__ = [
    "Event",
    "Hub",
    "LastPosition",
    "PluginError",
    "Principal",
    "ReceivedAt",
    "Registry",
    "Settings",
    "Stream",
    "Topic",
    "__version__",
    "create_app",
    "publish",
    "stream",
    "subscribe",
    "topic",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: `hub.subscribe` needs sse-starlette, which `hub serve` never
    # does, and `hub.create_app` FastAPI, which a plugin (`from hub import Event, stream`),
    # `hub tail` and `hub publish` never do.
    if name == "subscribe":
        from .embed import subscribe

        return subscribe
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'hub' has no attribute {name!r}")
