"""The HTTP face of the hub: the FastAPI app factory and its routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, Header, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse, ServerSentEvent

from . import __version__
from .events import encode_retry
from .merge import Activity, frames
from .registry import Registry, Stream
from .settings import Settings
from .subscription import (
    HUB_QUERY_PARAMETERS,
    RequestError,
    parse_subscription,
    split_streams,
)

__all__ = ["create_app", "create_app_from_env"]


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str = Field(examples=["unknown_stream"])
    message: str = Field(examples=["unknown stream 'nope'; available: echo, reverse_echo"])


class ErrorBody(BaseModel):
    error: ErrorDetail


class StreamInfo(BaseModel):
    name: str
    kind: Literal["generated", "topic"]
    description: str
    parameters: dict[str, Any] = Field(description="JSON Schema of the query parameters")
    event: dict[str, Any] = Field(description="JSON Schema of the events' data")


class Catalog(BaseModel):
    streams: list[StreamInfo]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    streams: int = Field(description="streams registered")
    subscriptions: int = Field(description="subscriptions being served now")
    open_streams: int = Field(description="stream sources open now, over all subscriptions")


def describe(definition: Stream) -> StreamInfo:
    return StreamInfo(
        name=definition.name,
        kind=definition.kind,
        description=definition.description,
        parameters=definition.parameters.model_json_schema(),
        event=definition.event_model.model_json_schema(),
    )


_EVENTS_DESCRIPTION = """\
Open the selected streams and receive their events merged into one Server-Sent-Events
response. Each frame's `event:` is the stream's name, its `data:` the event's JSON, and its
`id:` the cursor (`name:position` for every selected stream, sorted, joined by `,`; `-` for a
stream with nothing delivered yet). Send the cursor back as `Last-Event-ID` (or
`last_event_id`) to resume every stream where it stopped.

Stream parameters are query parameters: `?message=hi` goes to every selected stream that
declares `message`, `?echo.message=hi` to `echo` alone. Every stream takes `count`: end after
that many events. `GET /streams` lists the streams and their parameters.
"""

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "no `streams`, too many, or a malformed cursor"},
    404: {"model": ErrorBody, "description": "an unknown stream; the body lists the available"},
    422: {"model": ErrorBody, "description": "invalid or unknown parameters, each named"},
}


def create_app(settings: Settings | None = None, registry: Registry | None = None) -> FastAPI:
    settings = settings if settings is not None else Settings.from_env()
    if registry is None:
        registry = Registry.discover(
            settings.streams,
            builtin=settings.builtin_streams,
            entry_points=settings.entry_points,
        )
    activity = Activity()
    catalog = Catalog(streams=[describe(s) for s in registry])
    preamble = encode_retry(settings.retry)

    app = FastAPI(
        title="hub",
        version=__version__,
        summary="Many live event streams, merged into one resumable Server-Sent-Events response.",
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Last-Event-ID", "Content-Type"],
        )
    app.state.settings = settings
    app.state.registry = registry
    app.state.activity = activity

    @app.exception_handler(RequestError)
    async def refuse(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.get(
        "/events",
        summary="Subscribe to several streams in one SSE response",
        description=_EVENTS_DESCRIPTION,
        response_class=EventSourceResponse,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "the merged frames"},
            **_ERRORS,
        },
    )
    async def events(
        request: Request,
        streams: list[str] | None = Query(
            None,
            description="Stream names, comma-separated (or repeated).",
            examples=["echo,reverse_echo"],
        ),
        last_event_id: str | None = Query(
            None, description="The cursor to resume from, for clients that cannot set the header."
        ),
        last_event_id_header: str | None = Header(
            None,
            alias="Last-Event-ID",
            description="The cursor to resume from; wins over the query.",
        ),
    ) -> EventSourceResponse:
        subscription = parse_subscription(
            registry,
            split_streams(streams or ()),
            [
                (k, v)
                for k, v in request.query_params.multi_items()
                if k not in HUB_QUERY_PARAMETERS
            ],
            last_event_id_header if last_event_id_header is not None else last_event_id,
            max_streams=settings.max_streams,
        )

        async def body() -> AsyncIterator[bytes]:
            yield preamble
            async for frame in frames(subscription, activity):
                yield frame

        return EventSourceResponse(
            body(),
            headers={"Cache-Control": "no-store"},
            ping=settings.ping_interval,
            sep="\n",
            ping_message_factory=lambda: ServerSentEvent(comment="ping", sep="\n"),
            send_timeout=settings.send_timeout or None,
        )

    @app.get("/streams", summary="The catalog of streams")
    async def list_streams() -> Catalog:
        return catalog

    @app.get(
        "/streams/{name}",
        summary="One stream of the catalog",
        responses={404: _ERRORS[404]},
    )
    async def get_stream(name: str) -> StreamInfo:
        for info in catalog.streams:
            if info.name == name:
                return info
        raise RequestError(
            404,
            "unknown_stream",
            f"unknown stream {name!r}; available: {', '.join(registry.names()) or '(none)'}",
            unknown=[name],
            available=registry.names(),
        )

    @app.get("/health", summary="Liveness and current load")
    async def health() -> Health:
        return Health(
            streams=len(registry),
            subscriptions=activity.subscriptions,
            open_streams=activity.open_streams,
        )

    return app


def create_app_from_env() -> FastAPI:
    """The factory a reloading server imports; it reads everything from `HUB_*`."""
    return create_app(Settings.from_env())
