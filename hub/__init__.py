"""A multi-stream event hub: typed streams merged into one resumable SSE response."""

__version__ = "0.1.0"

from .app import create_app
from .events import Event
from .registry import LastPosition, PluginError, Registry, Stream, stream
from .settings import Settings

__all__ = [
    "Event",
    "LastPosition",
    "PluginError",
    "Registry",
    "Settings",
    "Stream",
    "__version__",
    "create_app",
    "stream",
]
