"""What a newcomer tripped on (issue 13): the distribution's name, the test prerequisites, plugin
errors that point at the plugin, offline documentation, and typos in a Redis URL."""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
import tomllib
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import TIMEOUT, get, run_hub

import hub
from hub import PluginError, Registry
from hub.brokers import broker_from_url
from hub.registry import ENTRY_POINT_GROUP, PluginWarning
from hub.testing import HubServer

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
TESTS = Path(__file__).parent


# --- the distribution is multistream-hub; `hub` on PyPI is another project -----------------


def test_the_distribution_is_named_multistream_hub() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "multistream-hub"
    assert "multistream-hub" in importlib.metadata.packages_distributions()["hub"]
    assert importlib.metadata.version("multistream-hub") == hub.__version__
    # The import package, the command and the plugins' entry point group keep their names.
    assert project["scripts"] == {"hub": "hub.cli:main"}
    assert ENTRY_POINT_GROUP == "hub.streams"


def test_a_missing_redis_py_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("redis", "redis.asyncio"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ValueError, match=re.escape("pip install 'multistream-hub[redis]'")):
        broker_from_url("redis://127.0.0.1:6379/0")


def test_no_install_hint_names_the_other_projects_hub() -> None:
    texts = [README.read_text()] + [p.read_text() for p in (ROOT / "hub").rglob("*.py")]
    for text in texts:
        assert not re.search(r"""['"]hub\[""", text)
        assert 'version("hub")' not in text
    # A plugin package depends on the hub by its distribution's name.
    assert 'dependencies = ["multistream-hub"]' in README.read_text()


# --- the test prerequisites, next to the test command ----------------------------------------


def test_the_readme_names_the_test_prerequisites_before_the_test_command() -> None:
    start = README.read_text().split("\n## Start\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", start, re.DOTALL)
    assert len(blocks) == 2  # one installs and starts the hub, one installs and runs the tests
    assert "pytest" in blocks[1]
    before_tests = start.split("```sh\n" + blocks[1])[0].split("```sh\n" + blocks[0])[1]
    assert "apt-get install redis-server chromium npm" in before_tests
    assert "fail" in before_tests  # and says what a missing one does


# --- plugin errors point at the plugin ---------------------------------------------------------

STREAM = """\
from collections.abc import AsyncIterator
from hub import Event, stream


class Ping(Event):
    n: int


@stream({name!r})
async def ping() -> AsyncIterator[Ping]:
    yield Ping(n=1)
"""


def assert_points_at_the_plugin(text: str, path: Path, line: int) -> None:
    assert f'File "{path}", line {line}' in text, text
    assert "importlib" not in text, text  # neither <frozen importlib._bootstrap> nor its package
    assert "hub_plugin_" not in text, text  # the module name the loader made up


def test_a_plugin_that_raises_shows_its_own_traceback(tmp_path: Path) -> None:
    plugin = tmp_path / "raising.py"
    plugin.write_text("def setup():\n    raise RuntimeError('no API key')\n\n\nsetup()\n")
    result = run_hub("streams", "--streams", str(plugin))
    assert result.returncode == 2
    assert result.stderr.startswith(f"hub: error: plugin {plugin} failed to import")
    assert_points_at_the_plugin(result.stderr, plugin, 5)
    assert_points_at_the_plugin(result.stderr, plugin, 2)
    assert "RuntimeError: no API key" in result.stderr
    assert "failed to import: RuntimeError(" not in result.stderr  # no repr


def test_a_plugin_with_a_syntax_error_shows_where(tmp_path: Path) -> None:
    plugin = tmp_path / "typo.py"
    plugin.write_text("import asyncio\n\ndef broken(:\n    pass\n")
    result = run_hub("serve", "--port", "0", "--streams", str(plugin))
    assert result.returncode == 2
    assert_points_at_the_plugin(result.stderr, plugin, 3)
    assert "SyntaxError: " in result.stderr
    assert "Uvicorn running" not in result.stderr


def test_a_malformed_stream_names_the_file_and_line(tmp_path: Path) -> None:
    plugin = tmp_path / "shouty.py"
    plugin.write_text(STREAM.format(name="Shouty"))
    with pytest.raises(PluginError) as info:
        Registry().load(str(plugin))
    message = str(info.value)
    assert message.startswith(f"plugin {plugin}: ping: stream name 'Shouty' is not valid")
    assert_points_at_the_plugin(message, plugin, 9)
    assert "@stream('Shouty')" in message


def test_a_failing_module_of_a_package_shows_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "acme_streams_13"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "weather.py").write_text("import json\n\njson.loads('{')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError) as info:
        Registry().load_package("acme_streams_13")
    message = str(info.value)
    assert message.startswith("plugin acme_streams_13.weather failed to import")
    assert_points_at_the_plugin(message, package / "weather.py", 3)
    assert "json.decoder.JSONDecodeError: Expecting property name" in message


def test_a_failing_entry_point_shows_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "acme_broken_13.py"
    module.write_text("import os\n\nos.environ['ACME_API_KEY']\n")
    info = tmp_path / "acme_broken-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nbroken = acme_broken_13\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("ACME_API_KEY", raising=False)
    with pytest.raises(PluginError) as error:
        Registry().load_entry_points()
    message = str(error.value)
    assert "(entry point 'broken' of acme-broken) failed to import" in message
    assert_points_at_the_plugin(message, module, 3)
    assert "KeyError: 'ACME_API_KEY'" in message


def test_a_plugin_without_a_stream_is_a_warning(tmp_path: Path) -> None:
    plugin = tmp_path / "nothing_here.py"
    plugin.write_text("from hub import Event\n\n\nclass Ping(Event):\n    n: int\n")
    with pytest.warns(PluginWarning, match=re.escape(f"plugin {plugin} declares no stream")):
        assert Registry().load(str(plugin)) == []
    result = run_hub("streams", "--no-builtin-streams", "--streams", str(plugin))
    assert result.returncode == 0, result.stderr
    assert f"plugin {plugin} declares no stream" in result.stderr
    assert "@stream" in result.stderr and "topic(" in result.stderr


def test_helper_modules_of_a_folder_or_package_are_no_plugins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "acme_folder_13"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    (folder / "_shared.py").write_text("LIMIT = 3\n")
    (folder / "ping.py").write_text(STREAM.format(name="ping-13"))
    monkeypatch.syspath_prepend(str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [s.name for s in Registry().load(str(folder))] == ["ping-13"]
        assert [s.name for s in Registry().load_package("acme_folder_13")] == ["ping-13"]


def test_the_suites_own_plugins_declare_streams() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "echo" in Registry.discover([str(TESTS / "plugins")]).names()
        for folder in ("keyed", "secured"):
            assert Registry().load(str(TESTS / folder))


# --- /docs works offline -------------------------------------------------------------------

ASSET = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url:\s*['"]([^'"]+)['"]""")
TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "json"}


def assets_of(html: str) -> list[str]:
    return [a or b for a, b in ASSET.findall(html)]


def check_served_by_the_hub(base: str, page: str, prefix: str = "") -> list[str]:
    answer = httpx.get(base + prefix + page, timeout=TIMEOUT)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://", answer.text.replace("http://www.w3.org", "")), answer.text
    urls = assets_of(answer.text)
    for url in urls:
        assert url.startswith(prefix + "/"), url
        served = httpx.get(base + url, timeout=TIMEOUT)
        assert served.status_code == 200, url
        kind = TYPES[os.path.splitext(url)[1]]
        assert kind in served.headers["content-type"], (url, served.headers["content-type"])
    return urls


def test_docs_load_nothing_from_elsewhere(hub_server: HubServer) -> None:
    urls = check_served_by_the_hub(hub_server.url, "/docs")
    assert {os.path.splitext(url)[1] for url in urls} == {".js", ".css", ".png", ".json"}
    assert "/openapi.json" in urls
    redoc = check_served_by_the_hub(hub_server.url, "/redoc")
    assert {os.path.splitext(url)[1] for url in redoc} == {".js", ".png", ".json"}
    redirect = get(hub_server, "/docs/oauth2-redirect")
    assert redirect.status_code == 200 and not re.search(r"https?://", redirect.text)


@pytest.fixture(scope="module")
def mounted() -> Iterator[HubServer]:
    """The example app, with the hub mounted under /hub."""
    server = HubServer()
    server.command = [sys.executable, "-m", "uvicorn", "hub.examples.embedded:app"]
    server.command += ["--host", "127.0.0.1", "--port", "0"]
    with server:
        yield server


def test_docs_under_a_mount_load_from_the_mount(mounted: HubServer) -> None:
    for page in ("/docs", "/redoc"):
        urls = check_served_by_the_hub(mounted.url, page, prefix="/hub")
        assert "/hub/openapi.json" in urls


# --- a typo in a Redis URL is named, not taken for an unreachable Redis -----------------------


def test_an_unknown_redis_url_option_is_named_with_the_known_ones() -> None:
    with pytest.raises(ValueError) as info:
        broker_from_url("redis://:secret@127.0.0.1:6379/0?prefx=hub:")
    message = str(info.value)
    assert "unknown option 'prefx' in the Redis URL" in message
    assert "did you mean 'prefix'?" in message
    for option in ("prefix", "lease_ttl", "command_timeout", "read_connections"):
        assert option in message
    for option in ("socket_timeout", "max_connections", "client_name", "db"):
        assert option in message  # redis-py's own, passed through
    assert "secret" not in message


def test_known_redis_url_options_are_accepted() -> None:
    url = (
        "redis://127.0.0.1:6379/0?prefix=p:&lease_ttl=5&command_timeout=2&read_connections=2"
        "&socket_timeout=4&socket_connect_timeout=1&max_connections=9&client_name=me"
        "&health_check_interval=30&socket_keepalive=true"
    )
    broker = broker_from_url(url)
    assert broker.url == url
    broker_from_url("rediss://127.0.0.1:6380/0?ssl_cert_reqs=none&ssl_check_hostname=false")
    with pytest.raises(ValueError, match="'ssl_cert_reqs' is an option of rediss://"):
        broker_from_url("redis://127.0.0.1:6379/0?ssl_cert_reqs=none")


def test_hub_serve_reports_an_unknown_redis_url_option_at_start() -> None:
    result = run_hub("serve", "--port", "0", "--broker", "redis://127.0.0.1:1/0?prefx=x")
    assert result.returncode == 2
    assert result.stderr.startswith("hub: error: unknown option 'prefx' in the Redis URL")
    assert "unavailable" not in result.stderr
