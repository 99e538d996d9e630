"""A multi-stream event hub: typed streams merged into one resumable SSE response."""

__version__ = "0.1.0"

from .app import create_app
from .auth import Principal
from .events import Event, ReceivedAt
from .registry import LastPosition, PluginError, Registry, Stream, Topic, stream, topic
from .runtime import Hub, publish
from .settings import Settings

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
    "topic",
]
