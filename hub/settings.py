"""Configuration: defaults, overridden by `HUB_*` environment variables, overridden by flags."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

__all__ = ["Settings", "SettingsError", "comma_list"]


class SettingsError(ValueError):
    """A configuration value that cannot be used; the message names the setting."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    # Extra plugins: `.py` files, folders of them, or module names.
    streams: tuple[str, ...] = ()
    # Also load the built-in `streams` package and installed entry points.
    builtin_streams: bool = True
    entry_points: bool = True
    broker: str = "memory://"  # where topics live
    broker_wait: float = 0.0  # seconds to wait at start for an unreachable broker; 0 = fail now
    max_streams: int = 16
    # Keyed topics (`room/lobby`) a memory broker holds at most: past it, the idle one used
    # least recently is dropped. An idle keyed topic in Redis expires after its family's
    # max_age, else after `idle_ttl` seconds.
    max_topics: int = 100_000
    idle_ttl: float = 24 * 3600.0
    buffer: int = 1000  # live frames queued per subscriber and topic before it is cut off
    max_publish_bytes: int = 1024 * 1024  # largest POST body accepted
    ping_interval: float = 15.0  # seconds between keep-alive comments; 0 disables them
    retry: int = 3000  # the reconnection delay hinted to browsers, in milliseconds
    send_timeout: float = 10.0  # a client that takes longer to accept a frame is dropped
    # Browser origins allowed to subscribe from other sites (CORS); "*" allows any.
    cors_origins: tuple[str, ...] = ()
    log_level: str = "info"
    # On SIGTERM or SIGINT: seconds until the process has exited, whatever the clients do.
    shutdown_grace: float = 5.0
    header_timeout: float = 10.0  # a request head must have arrived by then
    body_timeout: float = 10.0  # a publish body must have arrived by then
    keep_alive: int = 5  # seconds an idle keep-alive connection is kept
    # Open streams in this process; 0 = from the open-file limit, leaving room for the rest.
    max_connections: int = 0
    max_connections_per_client: int = 0  # open streams from one client address; 0 = off
    publish_rate: float = 0.0  # events per second per client address (burst: twice); 0 = off
    # Behind a proxy: take the client address from X-Forwarded-For / X-Forwarded-Proto when
    # the connection comes from one of `forwarded_allow_ips` ("*" for any).
    proxy_headers: bool = False
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")
    # Authorization, off unless a key is given: an HS256 secret, or the path of a PEM public
    # key (RS256 or ES256). The secret is kept out of repr(), and so out of any log.
    auth_key: str = field(default="", repr=False)
    auth_public_key: str = ""
    auth_audience: str = ""  # when set, a token's `aud` must name it
    auth_issuer: str = ""  # when set, a token's `iss` must be it
    auth_leeway: float = 5.0  # seconds of clock skew allowed on `exp` and `nbf`
    # Streams readable without a token (names or globs), besides those declared public.
    public: tuple[str, ...] = ()
    # GET /metrics (Prometheus), and the bearer token it asks for, if any.
    metrics: bool = True
    metrics_token: str = field(default="", repr=False)
    # GET /: the live page (its assets under /page/).
    page: bool = True

    def __post_init__(self) -> None:
        for name in ("port", "retry", "max_connections", "max_connections_per_client"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_streams", "max_topics", "buffer", "max_publish_bytes", "keep_alive"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("ping_interval", "send_timeout", "broker_wait", "publish_rate", "auth_leeway"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must be >= 0 seconds, got {getattr(self, name)}")
        for name in ("shutdown_grace", "header_timeout", "body_timeout", "idle_ttl"):
            if not getattr(self, name) > 0:
                raise SettingsError(f"{name} must be > 0 seconds, got {getattr(self, name)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then `HUB_<NAME>` variables, then the non-None `overrides`."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            variable = f"HUB_{f.name.upper()}"
            if variable in environ:
                values[f.name] = _convert(variable, environ[variable], _PARSERS[f.name])
        values.update({k: v for k, v in overrides.items() if v is not None})
        for name in ("streams", "cors_origins", "forwarded_allow_ips", "public"):
            if name in values:
                values[name] = tuple(values[name])
        return replace(cls(), **values)

    def to_env(self) -> dict[str, str]:
        """The `HUB_*` variables that reproduce these settings (for a reloading server)."""
        env = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, bool):
                value = "1" if value else "0"
            env[f"HUB_{f.name.upper()}"] = str(value)
        return env


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected one of 1, true, yes, on, 0, false, no, off")


def comma_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


_PARSERS: dict[str, Callable[[str], Any]] = {
    "host": str,
    "port": int,
    "streams": comma_list,
    "builtin_streams": _boolean,
    "entry_points": _boolean,
    "broker": str,
    "broker_wait": float,
    "max_streams": int,
    "max_topics": int,
    "idle_ttl": float,
    "buffer": int,
    "max_publish_bytes": int,
    "ping_interval": float,
    "retry": int,
    "send_timeout": float,
    "cors_origins": comma_list,
    "log_level": str.lower,
    "shutdown_grace": float,
    "header_timeout": float,
    "body_timeout": float,
    "keep_alive": int,
    "max_connections": int,
    "max_connections_per_client": int,
    "publish_rate": float,
    "proxy_headers": _boolean,
    "forwarded_allow_ips": comma_list,
    "auth_key": str,
    "auth_public_key": str,
    "auth_audience": str,
    "auth_issuer": str,
    "auth_leeway": float,
    "public": comma_list,
    "metrics": _boolean,
    "metrics_token": str,
    "page": _boolean,
}


def _convert(variable: str, text: str, parser: Callable[[str], Any]) -> Any:
    try:
        return parser(text)
    except ValueError as exc:
        raise SettingsError(
            f"environment variable {variable}={text!r} is not valid: {exc}"
        ) from None
