"""The `hub` command, run as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

from support import run_hub


def test_streams_prints_the_catalog_as_a_table() -> None:
    result = run_hub("streams")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "PARAMETERS", "DESCRIPTION"]
    rows = {
        line.split()[0]: line for line in lines[1:] if line.strip() and not line.startswith("*")
    }
    assert {"echo", "reverse_echo", "counter"} <= set(rows)
    assert "message, interval" in rows["echo"] and "generated" in rows["echo"]
    assert "topic" in rows["room/<key>"]  # a keyed family, as its topics are named


def test_streams_json_lists_schemas(tmp_path: Path) -> None:
    plugin = tmp_path / "needs.py"
    plugin.write_text(
        "from collections.abc import AsyncIterator\n"
        "from hub import Event, stream\n"
        "class E(Event):\n    x: int\n"
        "@stream('needs')\n"
        "async def needs(x: int) -> AsyncIterator[E]:\n    yield E(x=x)\n"
    )
    result = run_hub("streams", "--json", "--streams", str(plugin), "--no-builtin-streams")
    assert result.returncode == 0, result.stderr
    catalog = json.loads(result.stdout)
    assert [s["name"] for s in catalog] == ["needs"]
    assert catalog[0]["parameters"]["required"] == ["x"]
    table = run_hub("streams", "--streams", str(plugin), "--no-builtin-streams").stdout
    assert "x*" in table


def test_a_bad_environment_value_is_named() -> None:
    result = run_hub("serve", env={"HUB_PORT": "eighty"})
    assert result.returncode == 2
    assert "HUB_PORT='eighty'" in result.stderr


def test_a_missing_plugin_file_is_named() -> None:
    result = run_hub("streams", "--streams", "no/such/plugin.py")
    assert result.returncode == 2
    assert "no/such/plugin.py: no such file" in result.stderr


def test_a_plugin_that_fails_to_import_is_named(tmp_path: Path) -> None:
    plugin = tmp_path / "broken.py"
    plugin.write_text("import not_a_module_anywhere\n")
    result = run_hub("streams", "--streams", str(plugin))
    assert result.returncode == 2
    assert str(plugin) in result.stderr and "not_a_module_anywhere" in result.stderr


def test_version() -> None:
    result = run_hub("--version")
    assert result.returncode == 0 and result.stdout.startswith("hub ")
