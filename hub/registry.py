"""Stream definitions, the `@stream` decorator, and plugin discovery.

A plugin is a module; every `Stream` found among its top-level names is registered. Streams
come from three places: the modules of the `streams` package, the modules named by entry
points in the group `hub.streams`, and modules or `.py` files named at start. A plugin that
is malformed, or that reuses a name, stops start-up with a `PluginError` naming it; one that
raises while it is imported, with its own traceback (the import machinery's frames left out).
A plugin that declares no stream is most likely a mistake, but no reason to stop: a
`PluginWarning` names it. Helper modules (`_shared.py`) of a package or folder are skipped.
"""

from __future__ import annotations

import collections.abc
import copy
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import pkgutil
import re
import sys
import traceback
import types
import typing
import uuid
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Literal, cast, overload

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model
from pydantic.fields import FieldInfo

from .auth import KEY_PATTERN, Principal
from .brokers.base import TopicConfig
from .events import Event

__all__ = [
    "ENTRY_POINT_GROUP",
    "Definition",
    "InvalidKey",
    "LastPosition",
    "PluginError",
    "PluginWarning",
    "Registry",
    "Stream",
    "Topic",
    "UnknownStream",
    "stream",
    "topic",
]

ENTRY_POINT_GROUP = "hub.streams"
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
KEY_SYNTAX = "1 to 128 of A-Z a-z 0-9 _ - ~"
# Query parameters the hub itself reads; a plugin cannot declare them.
RESERVED_PARAMETERS = frozenset({"count", "streams", "last_event_id", "access_token"})


class PluginError(Exception):
    """A stream plugin that cannot be loaded: malformed, failing on import, or a duplicate."""


class PluginWarning(UserWarning):
    """A plugin that loads but looks wrong: one that declares no stream."""


class UnknownStream(LookupError):
    """A name that is no stream; `why` says more where there is more to say."""

    def __init__(self, name: str, why: str | None) -> None:
        super().__init__(name)
        self.name, self.why = name, why


class InvalidKey(ValueError):
    """A keyed family named without its key, or with a key its type refuses."""

    def __init__(self, stream: str, key: str | None, message: str) -> None:
        super().__init__(message)
        self.stream, self.key, self.message = stream, key, message


class _LastPositionMarker:
    def __repr__(self) -> str:
        return "LastPosition"


# Annotate one parameter of a generator with this to be told where a resuming subscriber
# stands: the position of the last event it received, or None on a fresh subscription.
LastPosition = Annotated[int | None, _LastPositionMarker()]

_ASYNC_ITERATOR_ORIGINS = {
    collections.abc.AsyncIterator,
    collections.abc.AsyncGenerator,
    collections.abc.AsyncIterable,
}


class Definition:
    """What the registry holds: a named stream with its event model and query parameters."""

    kind: Literal["generated", "topic"]
    name: str
    event_model: type[Event]
    description: str
    parameters: type[BaseModel]
    module: str
    # Parameters that take several values (`?tag=a&tag=b`); the others take one.
    multi_valued: frozenset[str] = frozenset()
    # Readable without a token when authorization is on.
    public: bool = False
    # A keyed family (`topic(..., key=str)`): no stream itself, but one topic per key, each
    # named `family/key` (`Topic.instance`).
    keyed: bool = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} from {self.module}>"


class Stream(Definition):
    """A generated stream: an async generator run once per subscriber, with its parameters."""

    kind = "generated"

    def __init__(
        self,
        name: str,
        function: Callable[..., AsyncIterator[Event]],
        event_model: type[Event],
        description: str,
        parameters: type[BaseModel],
        position_parameter: str | None,
        principal_parameter: str | None = None,
        principal_required: bool = False,
        public: bool = False,
    ) -> None:
        self.name = name
        self.function = function
        self.event_model = event_model
        self.description = description
        self.parameters = parameters
        self.position_parameter = position_parameter
        # The parameter that receives the caller (`Principal`), and whether the stream
        # refuses callers without one (typed `Principal`, not `Principal | None`).
        self.principal_parameter = principal_parameter
        self.principal_required = principal_required
        self.public = public
        self.module = function.__module__
        self.multi_valued = frozenset(
            field_name
            for field_name, field in parameters.model_fields.items()
            if _is_sequence(field.annotation)
        )

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncGenerator[Event, None]:
        # The decorated function stays callable, so an author can test it directly; it is an
        # async generator function, checked when the stream was defined.
        return cast(AsyncGenerator[Event, None], self.function(*args, **kwargs))

    def open(self, arguments: dict[str, Any], after: int | None) -> AsyncGenerator[Event, None]:
        """Start the generator for one subscriber, resuming after `after` if it opted in."""
        if self.position_parameter is not None:
            arguments = {**arguments, self.position_parameter: after}
        return self(**arguments)


class Topic(Definition):
    """A topic: one sequence of events shared by every subscriber, with a bounded history.

    Its events come from publishers (`POST /streams/{name}/events`, `await hub.publish(...)`)
    or, for a shared stream, from its producer: a generator run once for all subscribers.

    Declared with a `key` type, it is a *family*: one topic per key, named `family/key`, each
    with its own history and positions (`instance`), all of the same event model.
    """

    kind = "topic"

    def __init__(
        self,
        name: str,
        event_model: type[Event],
        description: str,
        module: str,
        config: TopicConfig,
        producer: Callable[..., AsyncIterator[Event]] | None = None,
        eager: bool = False,
        public: bool = False,
        key: Any = None,
    ) -> None:
        self.name = name
        self.event_model = event_model
        self.description = description
        self.module = module
        self.config = config
        self.producer = producer
        self.eager = eager
        self.public = public
        self.parameters = _COUNT_ONLY
        # Fields the hub fills in (JSON Schema readOnly): a publisher may not set them.
        self.read_only = frozenset(
            field_name
            for field_name, field in event_model.model_fields.items()
            if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("readOnly")
        )
        self.fields = frozenset(event_model.model_fields)  # what a published event may set
        # A family's key type, validated as a parameter is; its instances share it.
        self.key_type: TypeAdapter[Any] | None = None
        self.keyed = key is not None
        if key is not None:
            self.key_type = _key_adapter(key, f"{module}: topic {name!r}")
        # An instance's family, its key's text and its value (None on any other topic).
        self.family: Topic | None = None
        self.key: str | None = None

    @property
    def family_name(self) -> str:
        """The name its declaration has: the family's for a keyed topic, else its own."""
        return self.family.name if self.family is not None else self.name

    def key_schema(self) -> dict[str, Any] | None:
        """The JSON Schema of a key, for a family and its instances."""
        return self.key_type.json_schema() if self.key_type is not None else None

    def instance(self, text: str) -> Topic:
        """The topic of this family for the key `text`, named `family/key`; a `ValueError`
        says what is wrong with a key that its type refuses.

        The key is named as its type writes it: `room/007` of an int-keyed family is
        `room/7`, a UUID is lowercase, so that one key is one topic whatever its spelling.
        """
        assert self.key_type is not None, f"topic {self.name!r} is not keyed"
        if not KEY_PATTERN.fullmatch(text):
            raise ValueError(f"a key is {KEY_SYNTAX}")
        try:
            value = self.key_type.validate_python(text)
        except ValidationError as exc:
            raise ValueError("; ".join(e["msg"] for e in exc.errors(include_url=False))) from None
        canonical = _key_text(self.key_type, value)
        if not KEY_PATTERN.fullmatch(canonical):
            raise ValueError(f"the key is written {canonical!r}, and a key is {KEY_SYNTAX}")
        topic = copy.copy(self)
        topic.name, topic.keyed = f"{self.name}/{canonical}", False
        topic.family, topic.key = self, canonical
        if self.producer is not None:
            topic.producer = functools.partial(self.producer, key=value)
        return topic


def _key_adapter(key: Any, where: str) -> TypeAdapter[Any]:
    try:
        adapter: TypeAdapter[Any] = TypeAdapter(key)
        adapter.json_schema()
    except Exception as exc:  # pydantic's schema errors share no narrower base
        raise PluginError(
            f"{where}: key {key!r} is not a type pydantic can validate: {exc}"
        ) from exc
    return adapter


def _key_text(adapter: TypeAdapter[Any], value: Any) -> str:
    if isinstance(value, str | int | uuid.UUID) and not isinstance(value, bool):
        return str(value)
    return str(adapter.dump_python(value, mode="json"))


def topic(
    name: str,
    event: type[Event],
    *,
    description: str = "",
    history: int = 1000,
    max_age: float | None = None,
    public: bool = False,
    key: Any = None,
) -> Topic:
    """Declare a topic: events of type `event`, the last `history` kept (and, if `max_age` is
    given, none older than that many seconds) so that subscribers can resume. A `public`
    topic may be read without a token when authorization is on (publishing still needs one).

    With `key` (a type: `str`, `int`, `UUID`, `Annotated[str, Field(pattern=...)]`), it is
    a family of topics, one per key, each named `name/key` and made as it is first used:
    `topic("room", ChatMessage, key=str)` serves `room/lobby`, `room/kitchen`, ...
    """
    module = sys._getframe(1).f_globals.get("__name__", "?")
    where = f"{module}: topic {name!r}"
    _check_name(name, where)
    _check_event_model(event, where)
    config = _topic_config(history, max_age, where)
    return Topic(name, event, description.strip(), module, config, public=public, key=key)


def _topic_config(history: int, max_age: float | None, where: str) -> TopicConfig:
    if not isinstance(history, int) or isinstance(history, bool) or history < 0:
        raise PluginError(f"{where}: history must be an int >= 0 (events kept), got {history!r}")
    if max_age is not None and not (isinstance(max_age, int | float) and max_age > 0):
        raise PluginError(f"{where}: max_age must be a number of seconds > 0, got {max_age!r}")
    return TopicConfig(history=history, max_age=max_age)


def _check_name(name: object, where: str) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise PluginError(
            f"{where}: stream name {name!r} is not valid: use 1 to 64 lowercase letters, "
            f"digits, '_' and '-', starting with a letter or digit"
        )


def _check_event_model(model: object, where: str) -> None:
    if not (isinstance(model, type) and issubclass(model, Event)):
        raise PluginError(
            f"{where}: needs an event model, a subclass of hub.Event: "
            f"annotate the return as AsyncIterator[YourEvent] or pass event=YourEvent "
            f"(found {model!r})"
        )


@overload
def stream(
    name: str,
    *,
    event: type[Event] | None = None,
    description: str | None = None,
    shared: Literal[False] = False,
    public: bool = False,
) -> Callable[[Callable[..., AsyncIterator[Any]]], Stream]: ...


@overload
def stream(
    name: str,
    *,
    event: type[Event] | None = None,
    description: str | None = None,
    shared: Literal[True],
    history: int = 1000,
    max_age: float | None = None,
    eager: bool = False,
    public: bool = False,
    key: Any = None,
) -> Callable[[Callable[..., AsyncIterator[Any]]], Topic]: ...


def stream(
    name: str,
    *,
    event: type[Event] | None = None,
    description: str | None = None,
    shared: bool = False,
    history: int = 1000,
    max_age: float | None = None,
    eager: bool = False,
    public: bool = False,
    key: Any = None,
) -> Callable[[Callable[..., AsyncIterator[Any]]], Stream | Topic]:
    """Register an async generator function as the stream `name`.

    Its keyword parameters, typed, are the stream's query parameters; the event model is
    `event`, or else read from the return annotation `AsyncIterator[Model]`; the description
    is `description`, or else the function's docstring.

    With `shared=True` the generator runs once for all subscribers, from the first one's
    arrival (or from start-up, with `eager=True`) until the last one leaves; its events go
    into a topic of the same name, with `history` and `max_age` as for `topic()`.

    A shared stream with a `key` type is keyed, as a topic is (see `topic()`): the generator
    takes the key as its parameter `key` and runs once per key in use (`quotes/AAPL`: one
    upstream poller per symbol, however many subscribers).

    A `public` stream may be read without a token when authorization is on. A parameter
    typed `Principal | None` receives the verified caller (None without a token); typed
    `Principal`, the stream refuses callers without a token.
    """

    def decorate(function: Callable[..., AsyncIterator[Any]]) -> Stream | Topic:
        where = f"{function.__module__}.{function.__qualname__}"
        _check_name(name, where)
        if not inspect.isasyncgenfunction(function):
            raise PluginError(
                f"{where}: stream {name!r} must be an async generator function "
                f"('async def' with 'yield')"
            )
        try:
            hints = typing.get_type_hints(function, include_extras=True)
        except Exception as exc:
            raise PluginError(f"{where}: cannot resolve the type hints: {exc}") from exc
        model = event if event is not None else _event_model_from(hints.get("return"))
        _check_event_model(model, f"{where}: stream {name!r}")
        text = (description if description is not None else inspect.getdoc(function) or "").strip()
        if key is not None:
            if not shared:
                raise PluginError(
                    f"{where}: only a shared stream is keyed (shared=True, key=...); a "
                    f"generated stream takes parameters instead"
                )
            if eager:
                raise PluginError(
                    f"{where}: a keyed stream cannot be eager: its keys are known only as "
                    "subscribers name them"
                )
            if list(inspect.signature(function).parameters) != ["key"]:
                raise PluginError(
                    f"{where}: keyed shared stream {name!r} takes one parameter, 'key' (the "
                    f"key of the topic it feeds, e.g. 'AAPL' for {name}/AAPL), and no other"
                )
            config = _topic_config(history, max_age, f"{where}: shared stream {name!r}")
            return Topic(
                name, model, text, function.__module__, config, function, False, public, key
            )
        parameters, special = _parameters_model(name, function, hints, where)
        if not shared:
            return Stream(
                name,
                function,
                model,
                text,
                parameters,
                special.position,
                special.principal,
                special.principal_required,
                public,
            )
        if len(parameters.model_fields) > 1 or special.position or special.principal:
            raise PluginError(
                f"{where}: shared stream {name!r} runs once for every subscriber, so it cannot "
                f"take parameters; give it none (constants in the module are fine)"
            )
        config = _topic_config(history, max_age, f"{where}: shared stream {name!r}")
        return Topic(name, model, text, function.__module__, config, function, eager, public)

    return decorate


_COUNT_FIELD: Any = (
    Annotated[int | None, Field(ge=1, description="End after this many events.")],
    None,
)
_COUNT_ONLY = create_model(
    "TopicParameters", __config__=ConfigDict(extra="forbid"), count=_COUNT_FIELD
)


def _event_model_from(annotation: Any) -> Any:
    if typing.get_origin(annotation) in _ASYNC_ITERATOR_ORIGINS:
        args = typing.get_args(annotation)
        return args[0] if args else None
    return None


def _is_last_position(annotation: Any) -> bool:
    return typing.get_origin(annotation) is Annotated and any(
        isinstance(meta, _LastPositionMarker) for meta in annotation.__metadata__
    )


def _principal_kind(annotation: Any) -> Literal["required", "optional"] | None:
    """Whether a parameter takes the caller: typed `Principal`, or `Principal | None`."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if annotation is Principal:
        return "required"
    if _is_union(annotation) and set(typing.get_args(annotation)) == {Principal, type(None)}:
        return "optional"
    return None


class _Special(typing.NamedTuple):
    """The parameters the hub fills in itself, which are no query parameters."""

    position: str | None = None
    principal: str | None = None
    principal_required: bool = False


def _is_sequence(annotation: Any) -> bool:
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    candidates = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    return any(
        typing.get_origin(candidate) in (list, set, frozenset, tuple)
        or candidate in (list, set, frozenset, tuple)
        for candidate in candidates
    )


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _parameters_model(
    name: str, function: Callable[..., Any], hints: dict[str, Any], where: str
) -> tuple[type[BaseModel], _Special]:
    fields: dict[str, Any] = {"count": _COUNT_FIELD}
    position_parameter = None
    principal_parameter, principal_required = None, False
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise PluginError(f"{where}: *args and **kwargs are not allowed in a stream")
        if parameter.kind is parameter.POSITIONAL_ONLY:
            raise PluginError(f"{where}: parameter {parameter.name!r} must not be positional-only")
        if parameter.name not in hints:
            raise PluginError(
                f"{where}: parameter {parameter.name!r} needs a type hint, "
                f"e.g. '{parameter.name}: str = ...'"
            )
        annotation = hints[parameter.name]
        if _is_last_position(annotation):
            if position_parameter is not None:
                raise PluginError(f"{where}: only one parameter may be a LastPosition")
            position_parameter = parameter.name
            continue
        principal = _principal_kind(annotation)
        if principal is not None:
            if principal_parameter is not None:
                raise PluginError(f"{where}: only one parameter may be a Principal")
            principal_parameter = parameter.name
            principal_required = principal == "required"
            continue
        if parameter.name in RESERVED_PARAMETERS or parameter.name.startswith("_"):
            raise PluginError(
                f"{where}: parameter name {parameter.name!r} is reserved by the hub "
                f"({', '.join(sorted(RESERVED_PARAMETERS))} and names starting with '_')"
            )
        default = ... if parameter.default is parameter.empty else parameter.default
        if isinstance(default, FieldInfo):
            raise PluginError(
                f"{where}: parameter {parameter.name!r} has a Field(...) as its default; "
                f"write the constraints in the annotation and keep a plain default, e.g. "
                f"'{parameter.name}: Annotated[float, Field(ge=0)] = 1.0'"
            )
        fields[parameter.name] = (annotation, default)
    model_name = "".join(part.capitalize() for part in re.split(r"[_-]", name)) + "Parameters"
    try:
        model = create_model(
            model_name,
            # Infinity and NaN are no value a client means (`?interval=inf` would sleep for
            # ever): refused, with the parameter named.
            __config__=ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False),
            **fields,
        )
        model.model_json_schema()
        # A default that breaks its own constraint is the plugin's mistake: refuse it here,
        # not as a 422 blamed on every client that leaves the parameter out.
        for annotation, default in fields.values():
            if default is not ...:
                TypeAdapter(annotation).validate_python(default)
    except Exception as exc:  # pydantic's schema and validation errors share no narrower base
        raise PluginError(
            f"{where}: the parameters of stream {name!r} are not valid: {exc}"
        ) from exc
    return model, _Special(position_parameter, principal_parameter, principal_required)


class Registry:
    """The streams a hub serves, by name."""

    def __init__(self) -> None:
        self._streams: dict[str, Definition] = {}
        self._origins: dict[str, str] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._streams

    def __getitem__(self, name: str) -> Definition:
        return self._streams[name]

    def __iter__(self) -> Iterator[Definition]:
        return iter(sorted(self._streams.values(), key=lambda s: s.name))

    def __len__(self) -> int:
        return len(self._streams)

    def names(self) -> list[str]:
        return sorted(self._streams)

    def lookup(self, name: str) -> Definition:
        """The stream `name`; for `family/key`, the family's topic for that key.

        Raises `UnknownStream` for a name that is no stream (an unknown family, or a key on
        a stream that takes none), and `InvalidKey` for a keyed family named without a key,
        or with a key its type refuses."""
        family, slash, key = name.partition("/")
        definition = self._streams.get(family)
        if definition is None:
            raise UnknownStream(name, None)
        if not slash:
            if definition.keyed:
                raise InvalidKey(
                    name,
                    None,
                    f"stream {name!r} is keyed: name one of its topics as '{name}/<key>' "
                    f"(a key is {KEY_SYNTAX})",
                )
            return definition
        if not (isinstance(definition, Topic) and definition.keyed):
            raise UnknownStream(name, f"stream {family!r} takes no key")
        try:
            return definition.instance(key)
        except ValueError as exc:
            raise InvalidKey(
                family, key, f"key {key[:140]!r} of stream {family!r}: {exc}"
            ) from None

    def add(self, definition: Definition, origin: str | None = None) -> None:
        origin = origin or definition.module
        existing = self._streams.get(definition.name)
        if existing is definition:
            return
        if existing is not None:
            raise PluginError(
                f"plugin {origin}: stream name {definition.name!r} is already taken by "
                f"plugin {self._origins[definition.name]}"
            )
        self._streams[definition.name] = definition
        self._origins[definition.name] = origin

    def add_module(self, module: ModuleType, origin: str | None = None) -> list[Definition]:
        origin = origin or module.__name__
        found = [value for value in vars(module).values() if isinstance(value, Definition)]
        for definition in found:
            self.add(definition, origin)
        if not found:
            # Pointed at the plugin's own file, where the stream is missing.
            warnings.warn_explicit(
                f"plugin {origin} declares no stream: expected an async generator under "
                f"@stream(...) or a topic(...) at its top level (a helper module of a "
                f"package or folder of plugins is skipped when its name starts with '_')",
                PluginWarning,
                getattr(module, "__file__", None) or origin,
                1,
                module=module.__name__,
            )
        return found

    def load(self, plugin: str) -> list[Definition]:
        """Load a plugin named at start: a `.py` file, a folder of them, or a module name."""
        path = Path(plugin)
        if names_a_path(plugin):
            if path.is_dir():
                files = sorted(f for f in path.glob("*.py") if not f.name.startswith("_"))
                return [s for file in files for s in self.load(str(file))]
            if not path.is_file():
                raise PluginError(f"plugin {plugin}: no such file")
            return self.add_module(_import_file(path), str(path))
        return self.add_module(_import(plugin), plugin)

    def load_package(self, package: str = "streams") -> list[Definition]:
        """Load every module of a package (the built-in `streams`, by default)."""
        root = _import(package)
        found: list[Definition] = []
        for info in pkgutil.iter_modules(getattr(root, "__path__", [])):
            if not info.name.startswith("_"):
                found += self.add_module(_import(f"{package}.{info.name}"))
        return found

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> list[Definition]:
        """Load the plugins that installed distributions declare in the entry point group."""
        found: list[Definition] = []
        for entry_point in importlib.metadata.entry_points(group=group):
            dist = entry_point.dist.name if entry_point.dist else "?"
            origin = f"{entry_point.value} (entry point {entry_point.name!r} of {dist})"
            try:
                loaded = entry_point.load()
            except Exception as exc:
                raise _import_failure(origin, exc) from exc
            if isinstance(loaded, ModuleType):
                found += self.add_module(loaded, origin)
            elif isinstance(loaded, Definition):
                self.add(loaded, origin)
                found.append(loaded)
            else:
                raise PluginError(f"plugin {origin}: expected a module or a stream, got {loaded!r}")
        return found

    @classmethod
    def discover(
        cls,
        plugins: Iterable[str] = (),
        *,
        builtin: bool = True,
        entry_points: bool = True,
    ) -> Registry:
        registry = cls()
        if builtin:
            registry.load_package("streams")
        if entry_points:
            registry.load_entry_points()
        for plugin in plugins:
            registry.load(plugin)
        return registry


def names_a_path(plugin: str) -> bool:
    """Whether a plugin named at start is a file or folder, rather than a module name."""
    return plugin.endswith(".py") or Path(plugin).is_dir() or "/" in plugin or "\\" in plugin


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise _import_failure(name, exc) from exc


# Frames that say nothing about a plugin: the import machinery's, and the registry's own (the
# loader, and the checks whose message says what is wrong).
_IMPORTLIB = os.path.join(os.path.dirname(importlib.__file__), "")
_NOT_THE_PLUGINS = ("<frozen importlib.", _IMPORTLIB, __file__)


def _import_failure(origin: str, exc: Exception, generated: str | None = None) -> PluginError:
    """The error for a plugin that raised while it was imported: its own frames and the
    exception, as Python would print them, without the import machinery's frames.

    `generated` is the module name made up for a `.py` file, left out of messages: the file
    is named already."""
    report = traceback.TracebackException.from_exception(exc)
    _keep_the_plugins_frames(report, set())
    if isinstance(exc, PluginError):  # the hub's verdict: the message, then where
        message = str(exc)
        if generated is not None:
            message = message.replace(f"{generated}.", "").replace(f"{generated}: ", "")
        where = "".join(report.stack.format()).rstrip()
        return PluginError(f"plugin {origin}: {message}" + (f"\n{where}" if where else ""))
    text = "".join(report.format()).rstrip()
    separator = "\n" if "\n" in text else " "  # a bare `ModuleNotFoundError: ...` fits on a line
    return PluginError(f"plugin {origin} failed to import:{separator}{text}")


def _keep_the_plugins_frames(report: traceback.TracebackException, seen: set[int]) -> None:
    if id(report) in seen:
        return
    seen.add(id(report))
    report.stack = traceback.StackSummary.from_list(
        [frame for frame in report.stack if not frame.filename.startswith(_NOT_THE_PLUGINS)]
    )
    for chained in (report.__cause__, report.__context__, *(report.exceptions or ())):
        if chained is not None:
            _keep_the_plugins_frames(chained, seen)


def _import_file(path: Path) -> ModuleType:
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:8]
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"hub_plugin_{stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin {path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[module_name]
        if isinstance(exc, Exception):
            raise _import_failure(str(path), exc, module_name) from exc
        raise
    return module
