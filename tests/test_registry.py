"""The `@stream` decorator, validation of plugins, and the Registry's discovery."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field, ValidationError

from hub import Event, LastPosition, PluginError, Registry, Stream, stream


class Tick(Event):
    n: int


class NotAnEvent(BaseModel):
    n: int


class Opaque:
    """A type pydantic cannot build a schema for."""


def unique(prefix: str = "s") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


async def drain(iterator: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in iterator]


PLUGIN = """
from collections.abc import AsyncIterator
from hub import Event, stream

class Ping(Event):
    n: int

@stream({name!r})
async def ping(n: int = 0) -> AsyncIterator[Ping]:
    yield Ping(n=n)
"""


def write_plugin(path: Path, name: str) -> Path:
    path.write_text(PLUGIN.format(name=name))
    return path


# --- the decorator: valid definitions ---------------------------------------------------------


def test_event_model_from_async_iterator() -> None:
    @stream("ticks")
    async def ticks() -> AsyncIterator[Tick]:
        yield Tick(n=1)

    assert isinstance(ticks, Stream)
    assert (ticks.name, ticks.event_model, ticks.kind) == ("ticks", Tick, "generated")


def test_event_model_from_async_generator_and_iterable() -> None:
    @stream("gen")
    async def gen() -> AsyncGenerator[Tick, None]:
        yield Tick(n=1)

    @stream("iterable")
    async def iterable() -> AsyncIterable[Tick]:
        yield Tick(n=1)

    assert gen.event_model is Tick
    assert iterable.event_model is Tick


def test_event_model_from_the_event_argument() -> None:
    @stream("untyped-return", event=Tick)
    async def untyped():  # type: ignore[no-untyped-def]
        yield Tick(n=1)

    assert untyped.event_model is Tick


def test_description_from_docstring_or_argument() -> None:
    @stream("documented")
    async def documented() -> AsyncIterator[Tick]:
        """Ticks forever.

        Second paragraph.
        """
        yield Tick(n=1)

    @stream("described", description="  Given explicitly.  ")
    async def described() -> AsyncIterator[Tick]:
        """Ignored docstring."""
        yield Tick(n=1)

    @stream("bare")
    async def bare() -> AsyncIterator[Tick]:
        yield Tick(n=1)

    assert documented.description == "Ticks forever.\n\nSecond paragraph."
    assert described.description == "Given explicitly."
    assert bare.description == ""


def test_parameters_model() -> None:
    @stream("params")
    async def params(
        required: str,
        interval: Annotated[float, Field(ge=0)] = 1.0,
        label: str = "x",
    ) -> AsyncIterator[Tick]:
        yield Tick(n=1)

    model = params.parameters
    assert set(model.model_fields) == {"count", "required", "interval", "label"}
    assert model.model_validate({"required": "r"}).model_dump() == {
        "count": None,
        "required": "r",
        "interval": 1.0,
        "label": "x",
    }
    assert model.model_validate({"required": "r", "count": "3"}).model_dump()["count"] == 3
    for bad in ({}, {"required": "r", "count": -1}, {"required": "r", "interval": -0.5}):
        with pytest.raises(ValidationError):
            model.model_validate(bad)
    with pytest.raises(ValidationError):  # extra parameters are refused
        model.model_validate({"required": "r", "other": 1})
    assert params.multi_valued == frozenset()


def test_last_position_is_not_a_query_parameter_and_is_passed_by_open() -> None:
    @stream("resumable")
    async def resumable(start: int = 0, after: LastPosition = None) -> AsyncIterator[Tick]:
        yield Tick(n=start if after is None else start + after + 1)

    assert resumable.position_parameter == "after"
    assert set(resumable.parameters.model_fields) == {"count", "start"}
    assert asyncio.run(drain(resumable.open({"start": 10}, None))) == [Tick(n=10)]
    assert asyncio.run(drain(resumable.open({"start": 10}, 4))) == [Tick(n=15)]


def test_open_without_last_position_ignores_after() -> None:
    @stream("fresh")
    async def fresh(n: int = 0) -> AsyncIterator[Tick]:
        yield Tick(n=n)

    assert fresh.position_parameter is None
    assert asyncio.run(drain(fresh.open({"n": 2}, 7))) == [Tick(n=2)]


def test_decorated_object_stays_callable() -> None:
    @stream("callable")
    async def direct(n: int = 0) -> AsyncIterator[Tick]:
        yield Tick(n=n)
        yield Tick(n=n + 1)

    assert asyncio.run(drain(direct(n=5))) == [Tick(n=5), Tick(n=6)]
    assert asyncio.run(drain(direct())) == [Tick(n=0), Tick(n=1)]


def test_list_typed_parameters_are_multi_valued() -> None:
    @stream("tagged")
    async def tagged(
        tags: list[str] = [],  # noqa: B006
        ids: set[int] | None = None,
        also: Annotated[list[int] | None, Field(max_length=3)] = None,
        single: str = "",
    ) -> AsyncIterator[Tick]:
        yield Tick(n=len(tags))

    assert tagged.multi_valued == frozenset({"tags", "ids", "also"})


# --- the decorator: malformed definitions -----------------------------------------------------


@pytest.mark.parametrize("name", ["Echo", "a.b", "a b", "", "a" * 65, "-a", "_a", "é"])
def test_bad_names_are_refused(name: str) -> None:
    async def badly_named() -> AsyncIterator[Tick]:
        yield Tick(n=1)

    with pytest.raises(PluginError, match=r"badly_named: stream name .* is not valid") as info:
        stream(name)(badly_named)
    assert __name__ in str(info.value)


def test_longest_name_is_accepted() -> None:
    async def long_named() -> AsyncIterator[Tick]:
        yield Tick(n=1)

    assert stream("a" * 64)(long_named).name == "a" * 64


async def not_a_generator() -> AsyncIterator[Tick]:
    return None  # type: ignore[return-value]


def sync_generator() -> Iterator[Tick]:
    yield Tick(n=1)


def plain_function() -> AsyncIterator[Tick]:
    return None  # type: ignore[return-value]


@pytest.mark.parametrize("function", [not_a_generator, sync_generator, plain_function])
def test_only_async_generator_functions_are_accepted(function: Any) -> None:
    with pytest.raises(PluginError, match="must be an async generator function") as info:
        stream("bad")(function)
    assert f"{__name__}.{function.__name__}:" in str(info.value)


def test_an_event_model_is_required() -> None:
    async def no_annotation():  # type: ignore[no-untyped-def]
        yield Tick(n=1)

    async def not_an_event() -> AsyncIterator[NotAnEvent]:
        yield NotAnEvent(n=1)

    async def bare_iterator() -> AsyncIterator:  # type: ignore[type-arg]
        yield Tick(n=1)

    for function in (no_annotation, not_an_event, bare_iterator):
        with pytest.raises(PluginError, match="needs an event model, a subclass of hub") as info:
            stream("bad")(function)
        assert function.__qualname__ in str(info.value)
    with pytest.raises(PluginError, match="NotAnEvent"):
        stream("bad", event=NotAnEvent)(no_annotation)  # type: ignore[arg-type]


# Malformed generator functions, at module level so that their hints resolve.


async def untyped(x=1) -> AsyncIterator[Tick]:  # type: ignore[no-untyped-def]
    yield Tick(n=1)


async def var_positional(*args: int) -> AsyncIterator[Tick]:
    yield Tick(n=1)


async def var_keyword(**kwargs: int) -> AsyncIterator[Tick]:
    yield Tick(n=1)


async def positional_only(x: int = 0, /) -> AsyncIterator[Tick]:
    yield Tick(n=1)


async def reserved_count(count: int = 0) -> AsyncIterator[Tick]:
    yield Tick(n=1)


async def reserved_streams(streams: str = "") -> AsyncIterator[Tick]:
    yield Tick(n=1)


async def reserved_last_event_id(last_event_id: str = "") -> AsyncIterator[Tick]:
    yield Tick(n=1)


async def reserved_underscore(_private: int = 0) -> AsyncIterator[Tick]:
    yield Tick(n=1)


async def two_positions(a: LastPosition = None, b: LastPosition = None) -> AsyncIterator[Tick]:
    yield Tick(n=1)


async def invalid_default(interval: Annotated[float, Field(ge=0)] = -1) -> AsyncIterator[Tick]:
    yield Tick(n=1)


async def field_as_default(interval: float = Field(1.0, ge=0)) -> AsyncIterator[Tick]:
    yield Tick(n=1)


async def invalid_default_beside_required(
    message: str, interval: Annotated[float, Field(ge=0)] = -1
) -> AsyncIterator[Tick]:
    yield Tick(n=1)


async def opaque_type(thing: Opaque | None = None) -> AsyncIterator[Tick]:
    yield Tick(n=1)


MALFORMED = [
    (untyped, "parameter 'x' needs a type hint"),
    (var_positional, r"\*args and \*\*kwargs are not allowed"),
    (var_keyword, r"\*args and \*\*kwargs are not allowed"),
    (positional_only, "parameter 'x' must not be positional-only"),
    (reserved_count, "parameter name 'count' is reserved"),
    (reserved_streams, "parameter name 'streams' is reserved"),
    (reserved_last_event_id, "parameter name 'last_event_id' is reserved"),
    (reserved_underscore, "parameter name '_private' is reserved"),
    (two_positions, "only one parameter may be a LastPosition"),
    (invalid_default, "parameters of stream 'bad' are not valid"),
    (invalid_default_beside_required, "parameters of stream 'bad' are not valid"),
    (field_as_default, "has a Field\\(...\\) as its default; write the constraints"),
    (opaque_type, "parameters of stream 'bad' are not valid"),
]


@pytest.mark.parametrize(("function", "message"), MALFORMED, ids=[f.__name__ for f, _ in MALFORMED])
def test_malformed_parameters_are_refused(function: Any, message: str) -> None:
    with pytest.raises(PluginError, match=message) as info:
        stream("bad")(function)
    assert f"{__name__}.{function.__name__}:" in str(info.value)


# --- Registry ---------------------------------------------------------------------------------


def _ticks(name: str) -> Stream:
    async def ticks() -> AsyncIterator[Tick]:
        yield Tick(n=1)

    return stream(name)(ticks)


def test_add_is_idempotent_and_a_taken_name_names_both_origins() -> None:
    registry = Registry()
    first, second = _ticks("dup"), _ticks("dup")
    registry.add(first, "plugin-one")
    registry.add(first, "plugin-one-again")
    assert len(registry) == 1 and registry["dup"] is first and "dup" in registry
    taken = "plugin plugin-two: stream name 'dup' is already taken by plugin plugin-one"
    with pytest.raises(PluginError, match=taken):
        registry.add(second, "plugin-two")
    assert registry["dup"] is first


def test_registry_iterates_sorted() -> None:
    registry = Registry()
    for name in ("b", "c", "a"):
        registry.add(_ticks(name))
    assert registry.names() == ["a", "b", "c"]
    assert [s.name for s in registry] == ["a", "b", "c"]


def test_load_a_file_and_a_folder(tmp_path: Path) -> None:
    one, two, three = unique(), unique(), unique()
    file = write_plugin(tmp_path / "single.py", one)
    folder = tmp_path / "folder"
    folder.mkdir()
    write_plugin(folder / "b.py", three)
    write_plugin(folder / "a.py", two)
    (folder / "notes.txt").write_text("not a plugin")
    registry = Registry()
    assert [s.name for s in registry.load(str(file))] == [one]
    assert [s.name for s in registry.load(str(folder))] == [two, three]
    assert registry.names() == sorted([one, two, three])
    assert asyncio.run(drain(registry[one].open({"n": 3}, None)))[0].n == 3


def test_load_a_module_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package, name = unique("pkg"), unique()
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    write_plugin(tmp_path / package / "mine.py", name)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry()
    assert [s.name for s in registry.load(f"{package}.mine")] == [name]
    assert registry[name].module == f"{package}.mine"


def test_load_failures_name_the_plugin(tmp_path: Path) -> None:
    missing = tmp_path / "missing.py"
    with pytest.raises(PluginError, match=re.escape(f"plugin {missing}: no such file")):
        Registry().load(str(missing))
    raising = tmp_path / "raising.py"
    raising.write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(PluginError, match="boom at import") as info:
        Registry().load(str(raising))
    assert f"plugin {raising} failed to import" in str(info.value)
    malformed = tmp_path / "malformed.py"
    malformed.write_text(PLUGIN.format(name="Not Valid"))
    with pytest.raises(PluginError, match="stream name 'Not Valid' is not valid") as info:
        Registry().load(str(malformed))
    assert f"plugin {malformed}:" in str(info.value)
    nomodule = unique("nomodule")
    with pytest.raises(PluginError, match=f"plugin {nomodule} failed to import"):
        Registry().load(nomodule)


def test_load_package_finds_the_builtin_streams() -> None:
    registry = Registry()
    found = registry.load_package("streams")
    assert {s.name for s in found} >= {"counter", "echo", "reverse_echo"}
    assert {"counter", "echo", "reverse_echo"} <= set(registry.names())
    assert registry["counter"].position_parameter == "after"


def test_discover_without_sources_is_empty() -> None:
    registry = Registry.discover(builtin=False, entry_points=False)
    assert len(registry) == 0 and registry.names() == []


def _fake_distribution(root: Path, entry_points: str) -> None:
    info = root / "fakeplug-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[hub.streams]\n{entry_points}")


def test_load_entry_points_of_an_installed_distribution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, name = unique("fakeplug"), unique()
    write_plugin(tmp_path / f"{module}.py", name)
    _fake_distribution(tmp_path, f"fake = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry()
    assert [s.name for s in registry.load_entry_points()] == [name]
    assert name in registry
    assert name in Registry.discover(builtin=False).names()


def test_entry_point_to_a_stream_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module, name = unique("fakeplug"), unique()
    write_plugin(tmp_path / f"{module}.py", name)
    _fake_distribution(tmp_path, f"fake = {module}:ping\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (found,) = Registry().load_entry_points()
    assert isinstance(found, Stream) and found.name == name


def test_entry_point_failing_to_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = unique("fakeplug")
    (tmp_path / f"{module}.py").write_text("raise ImportError('missing dependency xyz')\n")
    _fake_distribution(tmp_path, f"broken = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="missing dependency xyz") as info:
        Registry().load_entry_points()
    assert f"plugin {module} (entry point 'broken' of fakeplug) failed to import" in str(info.value)


def test_entry_point_to_something_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = unique("fakeplug")
    (tmp_path / f"{module}.py").write_text("thing = 42\n")
    _fake_distribution(tmp_path, f"odd = {module}:thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="expected a module or a stream, got 42") as info:
        Registry().load_entry_points()
    assert "entry point 'odd' of fakeplug" in str(info.value)
