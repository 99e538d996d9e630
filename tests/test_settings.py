"""Settings: defaults, then HUB_* environment variables, then overrides."""

from __future__ import annotations

from typing import Any

import pytest

from hub.settings import Settings, SettingsError


def test_defaults() -> None:
    settings = Settings()
    assert settings == Settings(
        host="127.0.0.1",
        port=8000,
        streams=(),
        builtin_streams=True,
        entry_points=True,
        max_streams=16,
        ping_interval=15.0,
        retry=3000,
        send_timeout=10.0,
        log_level="info",
    )
    assert Settings.from_env({}) == settings


def test_from_env_reads_every_variable() -> None:
    environ = {
        "HUB_HOST": "0.0.0.0",
        "HUB_PORT": "9001",
        "HUB_STREAMS": "plugins/, my.module ,,x.py,",
        "HUB_BUILTIN_STREAMS": "no",
        "HUB_ENTRY_POINTS": "off",
        "HUB_MAX_STREAMS": "4",
        "HUB_PING_INTERVAL": "2.5",
        "HUB_RETRY": "0",
        "HUB_SEND_TIMEOUT": "0.25",
        "HUB_BROKER_WAIT": "30",
        "HUB_LOG_LEVEL": "DEBUG",
        "OTHER": "ignored",
    }
    assert Settings.from_env(environ) == Settings(
        host="0.0.0.0",
        port=9001,
        streams=("plugins/", "my.module", "x.py"),
        builtin_streams=False,
        entry_points=False,
        max_streams=4,
        ping_interval=2.5,
        retry=0,
        send_timeout=0.25,
        broker_wait=30.0,
        log_level="debug",
    )


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUB_PORT", "8123")
    monkeypatch.setenv("HUB_STREAMS", "a.py")
    settings = Settings.from_env()
    assert (settings.port, settings.streams) == (8123, ("a.py",))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        (" on ", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
        ("", False),
    ],
)
def test_boolean_variables(text: str, expected: bool) -> None:
    assert Settings.from_env({"HUB_BUILTIN_STREAMS": text}).builtin_streams is expected
    assert Settings.from_env({"HUB_ENTRY_POINTS": text}).entry_points is expected


@pytest.mark.parametrize(
    ("text", "expected"), [("", ()), (" , ", ()), ("a", ("a",)), ("a,b", ("a", "b"))]
)
def test_streams_variable(text: str, expected: tuple[str, ...]) -> None:
    assert Settings.from_env({"HUB_STREAMS": text}).streams == expected


def test_overrides_win_and_none_is_ignored() -> None:
    environ = {"HUB_PORT": "9001", "HUB_HOST": "0.0.0.0", "HUB_STREAMS": "env.py"}
    settings = Settings.from_env(environ, port=1234, host=None, streams=["flag.py"], retry=None)
    assert (settings.port, settings.host, settings.streams, settings.retry) == (
        1234,
        "0.0.0.0",
        ("flag.py",),
        3000,
    )
    assert Settings.from_env({}, builtin_streams=False).builtin_streams is False


@pytest.mark.parametrize(
    ("variable", "text"),
    [
        ("HUB_PORT", "abc"),
        ("HUB_PORT", "80.5"),
        ("HUB_ENTRY_POINTS", "maybe"),
        ("HUB_BUILTIN_STREAMS", "2"),
        ("HUB_MAX_STREAMS", "many"),
        ("HUB_PING_INTERVAL", "soon"),
        ("HUB_RETRY", "1.5"),
        ("HUB_SEND_TIMEOUT", "10s"),
    ],
)
def test_bad_value_names_the_variable(variable: str, text: str) -> None:
    with pytest.raises(SettingsError, match=f"{variable}='{text}' is not valid"):
        Settings.from_env({variable: text})


@pytest.mark.parametrize(
    ("variable", "text", "setting"),
    [
        ("HUB_PORT", "-1", "port"),
        ("HUB_MAX_STREAMS", "-3", "max_streams"),
        ("HUB_MAX_STREAMS", "0", "max_streams"),
        ("HUB_RETRY", "-1", "retry"),
        ("HUB_PING_INTERVAL", "-0.5", "ping_interval"),
        ("HUB_SEND_TIMEOUT", "-1", "send_timeout"),
        ("HUB_BROKER_WAIT", "-1", "broker_wait"),
    ],
)
def test_out_of_range_values_are_rejected(variable: str, text: str, setting: str) -> None:
    with pytest.raises(SettingsError, match=f"{setting} must be >="):
        Settings.from_env({variable: text})


@pytest.mark.parametrize(
    "values",
    [
        {"port": -1},
        {"max_streams": 0},
        {"retry": -5},
        {"ping_interval": -1.0},
        {"send_timeout": -0.1},
    ],
)
def test_out_of_range_values_are_rejected_in_code(values: dict[str, Any]) -> None:
    with pytest.raises(SettingsError):
        Settings(**values)
    with pytest.raises(SettingsError):
        Settings.from_env({}, **values)


def test_zero_is_allowed_where_it_means_something() -> None:
    settings = Settings(port=0, ping_interval=0, retry=0, send_timeout=0)
    assert settings.port == settings.retry == 0
    assert settings.ping_interval == settings.send_timeout == 0


@pytest.mark.parametrize(
    "settings",
    [
        Settings(),
        Settings(
            host="::1",
            port=0,
            streams=("plugins/", "my.module"),
            builtin_streams=False,
            entry_points=False,
            max_streams=3,
            ping_interval=0.5,
            retry=1500,
            send_timeout=2.0,
            cors_origins=("https://a.example", "https://b.example"),
            log_level="warning",
            shutdown_grace=2.5,
            header_timeout=3.0,
            body_timeout=4.0,
            keep_alive=7,
            max_connections=500,
            max_connections_per_client=20,
            publish_rate=50.0,
            proxy_headers=True,
            forwarded_allow_ips=("10.0.0.1", "10.0.0.2"),
            auth_key="a secret of thirty-two bytes or more, for HS256",
            auth_audience="hub",
            auth_issuer="https://issuer.example",
            auth_leeway=2.5,
            public=("news", "status_*"),
        ),
        Settings(streams=("one.py",), ping_interval=0.1, entry_points=False),
    ],
)
def test_to_env_round_trips(settings: Settings) -> None:
    env = settings.to_env()
    assert set(env) == {
        "HUB_HOST",
        "HUB_PORT",
        "HUB_STREAMS",
        "HUB_BUILTIN_STREAMS",
        "HUB_ENTRY_POINTS",
        "HUB_BROKER",
        "HUB_BROKER_WAIT",
        "HUB_MAX_STREAMS",
        "HUB_MAX_TOPICS",
        "HUB_IDLE_TTL",
        "HUB_BUFFER",
        "HUB_MAX_PUBLISH_BYTES",
        "HUB_PING_INTERVAL",
        "HUB_RETRY",
        "HUB_SEND_TIMEOUT",
        "HUB_CORS_ORIGINS",
        "HUB_LOG_LEVEL",
        "HUB_SHUTDOWN_GRACE",
        "HUB_HEADER_TIMEOUT",
        "HUB_BODY_TIMEOUT",
        "HUB_KEEP_ALIVE",
        "HUB_MAX_CONNECTIONS",
        "HUB_MAX_CONNECTIONS_PER_CLIENT",
        "HUB_PUBLISH_RATE",
        "HUB_PROXY_HEADERS",
        "HUB_FORWARDED_ALLOW_IPS",
        "HUB_AUTH_KEY",
        "HUB_AUTH_PUBLIC_KEY",
        "HUB_AUTH_AUDIENCE",
        "HUB_AUTH_ISSUER",
        "HUB_AUTH_LEEWAY",
        "HUB_PUBLIC",
        "HUB_METRICS",
        "HUB_METRICS_TOKEN",
        "HUB_PAGE",
    }
    assert all(isinstance(value, str) for value in env.values())
    assert Settings.from_env(env) == settings


def test_to_env_form() -> None:
    env = Settings(streams=("a.py", "b"), builtin_streams=False).to_env()
    assert env["HUB_STREAMS"] == "a.py,b"
    assert (env["HUB_BUILTIN_STREAMS"], env["HUB_ENTRY_POINTS"]) == ("0", "1")
    assert (env["HUB_PORT"], env["HUB_PING_INTERVAL"]) == ("8000", "15.0")
