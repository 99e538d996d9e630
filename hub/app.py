"""The HTTP face of the hub: the FastAPI app factory and its routes."""

from __future__ import annotations

import asyncio
import copy
import importlib.resources
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import Headers, QueryParams
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from . import __version__, asyncapi
from .auth import QUERY_PARAMETER, Access, redact_logs
from .bodies import published_json, read_json, require_json
from .brokers import BrokerUnavailable
from .errors import RequestError
from .events import control_body, encode_retry
from .merge import Activity
from .metrics import Metrics
from .page import add_page
from .registry import Definition, Registry, Topic
from .runtime import Hub
from .settings import Settings
from .sse import SSEResponse
from .subscription import (
    HUB_QUERY_PARAMETERS,
    Subscription,
    find_stream,
    split_streams,
    unknown_stream,
)
from .ws import deny, serve_websocket

__all__ = ["HubApp", "create_app", "create_app_from_env"]

logger = logging.getLogger("hub")


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
    history: int | None = Field(None, description="events a topic keeps for resume")
    max_age: float | None = Field(None, description="seconds a topic keeps an event, if bounded")
    publishable: bool = Field(description="accepts POST /streams/{name}/events")
    keyed: bool = Field(
        False,
        description="a family of topics, one per key, each named `name/key` (`room/lobby`)",
    )
    key: dict[str, Any] | None = Field(
        None, description="JSON Schema of a keyed family's keys (1 to 128 of A-Z a-z 0-9 _ - ~)"
    )
    position: str | None = Field(
        default=None,
        description="for one topic of a keyed family (GET /streams/{name}/{key}): the position "
        "of its newest event, None if it has none",
    )


class Catalog(BaseModel):
    streams: list[StreamInfo]


# A stream parameter's value in a POST /events body: what a query parameter's text reads as.
ParameterValue = (str, int, float, bool)


class Selection(BaseModel):
    """The body of POST /events: what `GET /events` takes in its query, as JSON."""

    model_config = ConfigDict(extra="forbid")
    streams: list[str] | str = Field(
        default_factory=list,
        description="Stream names (a keyed topic as `family/key`), or one comma-separated string.",
        examples=[["echo", "room/lobby"]],
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Stream parameters, as in the query: `message` goes to every selected "
        "stream declaring it, `echo.message` to `echo` alone; a list repeats a parameter.",
        examples=[{"message": "hi", "echo.interval": 0.5}],
    )
    last_event_id: str | None = Field(
        None, description="The cursor to resume from; a `Last-Event-ID` header wins over it."
    )

    def names(self) -> list[str]:
        return split_streams([self.streams] if isinstance(self.streams, str) else self.streams)

    def query(self) -> list[tuple[str, str]]:
        """The parameters as the query's pairs of text; a 422 naming each value that is not
        a string, a number, a boolean or a list of those."""
        pairs, errors = [], []
        for key, value in self.params.items():
            for item in value if isinstance(value, list) else [value]:
                if not isinstance(item, ParameterValue):
                    errors.append(
                        {
                            "where": f"params.{key}",
                            "message": "expected a string, a number, true or false, or a "
                            f"list of those; got {type(item).__name__}",
                        }
                    )
                    continue
                text = ("true" if item else "false") if isinstance(item, bool) else str(item)
                pairs.append((key, text))
        if errors:
            summary = "; ".join(f"{e['where']}: {e['message']}" for e in errors[:10])
            raise RequestError(
                422, "invalid_request", f"invalid selection: {summary}", errors=errors
            )
        return pairs


# The largest POST /events body: 16 streams, their parameters and a cursor fit many times.
MAX_SELECTION_BYTES = 64 * 1024


class Published(BaseModel):
    positions: list[str] = Field(description="the topic position of each event, in order")
    ids: list[str] = Field(description="the id a subscriber of this topic alone sees for each")


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    pid: int = Field(description="this hub process (one of several with --workers)")
    broker: str
    streams: int = Field(description="streams registered")
    subscriptions: int = Field(description="subscriptions being served now")
    open_streams: int = Field(description="stream sources open now, over all subscriptions")
    buffered: int = Field(description="live frames queued for subscribers, in all")
    max_buffered: int = Field(description="live frames queued for the most behind subscriber")
    topics: int = Field(
        description="topics this process holds (memory broker: keyed ones included, up to "
        "--max-topics of those) or reads for its subscribers (Redis)"
    )
    producers: list[str] = Field(description="shared streams whose producer runs here now")
    standby: list[str] = Field(
        description="shared streams wanted here whose producer runs in another process"
    )
    connections: int = Field(description="HTTP connections open now (under `hub serve`)")
    clients: int = Field(description="client addresses with streams open now")
    tasks: int = Field(description="asyncio tasks alive in this process")
    open_files: int | None = Field(description="file descriptors open (Linux), None elsewhere")
    rss_bytes: int | None = Field(description="resident memory (Linux), None elsewhere")
    loop_lag_ms: float = Field(
        description="the longest the event loop was kept from serving others over the last "
        "10 s, in milliseconds: a few are normal, a hundred is a blocked loop"
    )


def _refusal(
    exc: RequestError, headers: Headers | None = None, activity: Activity | None = None
) -> Response:
    """The answer to a refused request: its JSON error, or, for a subscription refused for
    load from an `EventSource` (which gives up for good on any status but 200), a 200 with a
    `retry:` backoff and one `hub.busy` frame naming the limit. Counted in `activity`."""
    if activity is not None:
        activity.refused[exc.code] += 1
    if exc.load and headers is not None and "text/event-stream" in headers.get("accept", ""):
        delay = exc.retry_after if exc.retry_after is not None else 5.0
        body = encode_retry(int(delay * 1000)) + control_body(
            "busy",
            code=exc.code,
            message=exc.message,
            limit=exc.details.get("limit"),
            retry_after=delay,
        )
        return Response(
            body,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "Connection": "close", **exc.headers()},
        )
    extra = exc.headers()
    if exc.status == 405:
        extra["Allow"] = ", ".join(exc.details.get("allow", ()))
    if exc.status in (408, 503) or exc.load:
        extra["Connection"] = "close"
    return JSONResponse(exc.body(), status_code=exc.status, headers=extra or None)


class HubApp(FastAPI):
    """The hub's FastAPI app, which serves GET /events ahead of its own middleware and router.

    A subscription holds its request open for as long as it lasts, and with it everything the
    request passed through: the Request, dependency results and exit stacks the router built,
    the frames of every middleware. That is about 13 KB per idle subscriber, more than
    uvicorn's own connection; served from here, it is gone. The FastAPI route stays for the
    documentation, and answers the same way if it is ever reached.
    """

    subscribe: Callable[[Scope], SSEResponse] | None = None
    # POST /events: the subscription a JSON body selects
    subscribe_posted: Callable[[Scope, Receive], Awaitable[SSEResponse]] | None = None
    # every WebSocket connection (`/ws`, and a 404 for any other path)
    serve_websocket: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None
    cors: ASGIApp | None = None  # the /events endpoint behind CORS, when CORS is on
    activity: Activity | None = None  # where refusals are counted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.subscribe is not None:
            kind = scope["type"]
            if (
                kind == "http"
                and scope["path"].removeprefix(scope.get("root_path", "")) == "/events"
                and scope["method"] in ("GET", "HEAD", "OPTIONS", "POST")
            ):
                if self.cors is not None:
                    await self.cors(scope, receive, send)
                else:
                    await self._events_endpoint(scope, receive, send)
                return
            if kind == "websocket" and self.serve_websocket is not None:
                await self.serve_websocket(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def events(self, scope: Scope) -> Response:
        """The response to a request for /events: a subscription, or a refusal."""
        assert self.subscribe is not None
        if scope["method"] == "OPTIONS":  # a preflight that CORS did not answer
            return _refusal(
                RequestError(
                    405,
                    "method_not_allowed",
                    "/events answers GET, HEAD and POST; OPTIONS only as a CORS preflight from "
                    "an allowed origin (--cors-origin)",
                    allow=["GET", "HEAD", "POST"],
                ),
                activity=self.activity,
            )
        try:
            return self.subscribe(scope)
        except RequestError as exc:
            return _refusal(exc, Headers(scope=scope), self.activity)

    async def posted(self, scope: Scope, receive: Receive) -> Response:
        """The response to POST /events: a subscription, or a refusal."""
        assert self.subscribe_posted is not None
        try:
            return await self.subscribe_posted(scope, receive)
        except RequestError as exc:
            return _refusal(exc, Headers(scope=scope), self.activity)

    async def _events_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "POST":
            response = await self.posted(scope, receive)
        else:
            response = self.events(scope)
        await response(scope, receive, send)


def describe(definition: Definition) -> StreamInfo:
    topic = definition if isinstance(definition, Topic) else None
    return StreamInfo(
        name=definition.name,
        kind=definition.kind,
        description=definition.description,
        parameters=definition.parameters.model_json_schema(),
        event=definition.event_model.model_json_schema(),
        history=topic.config.history if topic else None,
        max_age=topic.config.max_age if topic else None,
        publishable=topic is not None and topic.producer is None,
        keyed=topic is not None and topic.key_type is not None,
        key=topic.key_schema() if topic else None,
    )


_SELECTION_HINT = (
    'send {"streams": ["echo", "room/lobby"], "params": {"message": "hi"}, '
    '"last_event_id": "<cursor>"} (only "streams" is needed)'
)

_EVENTS_DESCRIPTION = """\
Open the selected streams and receive their events merged into one Server-Sent-Events
response. Each frame's `event:` is the stream's name, its `data:` the event's JSON, and its
`id:` the cursor (`name:position` for every selected stream, sorted, joined by `,`; `-` for a
generated stream with nothing delivered yet). Send the cursor back as `Last-Event-ID` (or
`last_event_id`) to resume every stream where it stopped: a topic replays what it still holds.

Stream parameters are query parameters: `?message=hi` goes to every selected stream that
declares `message`, `?echo.message=hi` to `echo` alone. Every stream takes `count`: end after
that many events. `GET /streams` lists the streams and their parameters.
"""

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "no `streams`, too many, or a malformed cursor"},
    401: {
        "model": ErrorBody,
        "description": "a token is needed and missing, or does not verify (with authorization "
        "on); `WWW-Authenticate` says which",
    },
    403: {
        "model": ErrorBody,
        "description": "the token grants no subscribe to the streams listed in `streams`",
    },
    404: {"model": ErrorBody, "description": "an unknown stream; the body lists the available"},
    414: {"model": ErrorBody, "description": "the request target is over 8 KiB"},
    422: {"model": ErrorBody, "description": "invalid or unknown parameters, each named"},
    429: {
        "model": ErrorBody,
        "description": "too many streams open from this client (--max-connections-per-client)",
    },
    503: {
        "model": ErrorBody,
        "description": "the hub is full (--max-connections) or shutting down; retry after "
        "`Retry-After` (an EventSource gets a 200 with `hub.busy` instead)",
    },
}
_PUBLISH_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "the body is not JSON, or nests too deep"},
    401: {
        "model": ErrorBody,
        "description": "no token, or one that does not verify (with authorization on)",
    },
    403: {"model": ErrorBody, "description": "the token grants no publish to this topic"},
    404: _ERRORS[404],
    405: {"model": ErrorBody, "description": "not a topic that accepts events"},
    408: {"model": ErrorBody, "description": "the body did not arrive within --body-timeout"},
    413: {"model": ErrorBody, "description": "the body is over the size limit"},
    415: {"model": ErrorBody, "description": "the body is not sent as application/json"},
    422: {"model": ErrorBody, "description": "events that do not fit the model, named"},
    429: {"model": ErrorBody, "description": "over --publish-rate; retry after `Retry-After`"},
    503: {"model": ErrorBody, "description": "the broker cannot be reached; retry"},
}


def create_app(settings: Settings | None = None, registry: Registry | None = None) -> HubApp:
    settings = settings if settings is not None else Settings.from_env()
    if registry is None:
        registry = Registry.discover(
            settings.streams,
            builtin=settings.builtin_streams,
            entry_points=settings.entry_points,
        )
    hub = Hub(registry, settings)
    auth = hub.auth
    catalog = Catalog(streams=[describe(s) for s in registry])
    described = {info.name: info for info in catalog.streams}
    preamble = encode_retry(settings.retry)  # the first bytes of every subscription
    # uvicorn's access log writes each request's target: a query token must not be in it.
    redact_logs("uvicorn.access", "hub")

    metrics = Metrics(hub, settings.metrics_token) if settings.metrics else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with hub:
            if metrics is not None:
                metrics.start()
            try:
                # The lifespan's state is shared with the server: the hub's protocols find
                # their hub there (`hub.protocol`).
                yield {"hub": hub}
            finally:
                if metrics is not None:
                    await metrics.stop()

    app = HubApp(
        title="hub",
        version=__version__,
        summary="Many live event streams, merged into one resumable Server-Sent-Events response.",
        lifespan=lifespan,
        # FastAPI's pages load their scripts from a CDN: the hub's own serve its files.
        docs_url=None,
        redoc_url=None,
    )
    cors = {
        "allow_origins": list(settings.cors_origins),
        "allow_methods": ["GET", "POST"],
        "allow_headers": ["Last-Event-ID", "Content-Type", "Authorization"],
        # Cookies (the hub_token) from the origins named, never from any: a browser refuses
        # credentials with "*", and any site could read a signed-in user's streams.
        "allow_credentials": "*" not in settings.cors_origins,
    }
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, **cors)  # type: ignore[arg-type]
    app.state.settings = settings
    app.state.registry = registry
    app.state.hub = hub

    @app.exception_handler(RequestError)
    async def refuse(request: Request, exc: RequestError) -> Response:
        return _refusal(exc, request.headers, hub.activity)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Starlette's own refusals (no such route, a method the route does not take), in the
        # hub's error shape rather than FastAPI's {"detail": ...}.
        if exc.status_code == 404:
            error = RequestError(
                404,
                "not_found",
                f"no route {request.url.path!r}; the hub serves /events, /streams, "
                "/streams/{name}, /streams/{name}/events (a keyed topic: /streams/{name}/{key} "
                "and /streams/{name}/{key}/events), /ws, /health, /metrics, /asyncapi.json, "
                "/docs and /redoc, and the live page at /",
            )
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            error = RequestError(
                405,
                "method_not_allowed",
                f"{request.method} is not accepted on {request.url.path!r}; "
                f"accepted: {allowed or 'none'}",
                allow=[m.strip() for m in allowed.split(",") if m.strip()],
            )
        else:
            error = RequestError(exc.status_code, "http_error", str(exc.detail))
        return _refusal(error, activity=hub.activity)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"where": ".".join(str(part) for part in e["loc"]), "message": e["msg"]}
            for e in exc.errors()
        ]
        summary = "; ".join(f"{e['where']}: {e['message']}" for e in errors)
        return _refusal(
            RequestError(422, "invalid_request", f"invalid request: {summary}", errors=errors),
            activity=hub.activity,
        )

    def access_of(scope: Scope, query: QueryParams | None = None) -> Access:
        """The caller's access, from the request's token (a 401 for one that is not valid)."""
        if not auth.enabled:
            return auth.access((), None)
        if query is None:
            query = QueryParams(scope["query_string"])
        return auth.access(scope["headers"], query.get(QUERY_PARAMETER))

    def admit(scope: Scope, selection: Selection | None = None) -> tuple[Subscription, Access, str]:
        """Every way in (GET and POST /events, /ws): the subscription the request selects (in
        its query, or in `selection`), the caller's access and address; or a RequestError
        before anything is opened. The client is counted by the limits until the hub releases
        it (`Hub.untrack`)."""
        query = QueryParams(scope["query_string"])
        access = access_of(scope, query)
        if selection is None:
            names = split_streams(query.getlist("streams"))
            pairs = [(k, v) for k, v in query.multi_items() if k not in HUB_QUERY_PARAMETERS]
            cursor = query.get("last_event_id")
        else:
            names, pairs, cursor = selection.names(), selection.query(), selection.last_event_id
        header_cursor = Headers(scope=scope).get("last-event-id")
        subscription = hub.open(
            names, pairs, header_cursor if header_cursor is not None else cursor, access
        )
        if hub.stopping:
            raise RequestError(
                503,
                "shutting_down",
                "this hub is shutting down; reconnect (to another instance)",
                retry_after=settings.retry / 1000,
                load=True,
            )
        client = _client(scope)
        hub.limits.admit(client)
        return subscription, access, client

    def respond(subscription: Subscription, access: Access, client: str) -> SSEResponse:
        response = SSEResponse(tracker=hub)
        response.client = client  # the hub releases it when the response is over
        if access.expires is not None:
            response.expires = access.expires  # it ends with hub.expired then
        response.chunks = hub.frames(
            subscription, preamble=preamble, direct=response.send_now, drop=response.drop
        )
        return response

    def subscribe(scope: Scope) -> SSEResponse:
        """The response to GET /events, or a RequestError before anything is opened."""
        return respond(*admit(scope))

    async def subscribe_posted(scope: Scope, receive: Receive) -> SSEResponse:
        """The response to POST /events, or a RequestError before anything is opened."""
        request = Request(scope, receive)
        require_json(request, "send the selection")
        payload = await read_json(
            request, MAX_SELECTION_BYTES, settings.body_timeout, _SELECTION_HINT
        )
        try:
            selection = Selection.model_validate(payload)
        except ValidationError as exc:
            errors = [
                {"where": ".".join(str(part) for part in e["loc"]) or "(body)", "message": e["msg"]}
                for e in exc.errors(include_url=False)
            ]
            summary = "; ".join(f"{e['where']}: {e['message']}" for e in errors[:10])
            raise RequestError(
                422,
                "invalid_request",
                f"invalid selection: {summary}; {_SELECTION_HINT}",
                errors=errors,
            ) from None
        return respond(*admit(scope, selection))

    async def websocket(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        if path == "/ws":
            await serve_websocket(hub, scope, receive, send, admit)
            return
        await receive()
        refusal = RequestError(
            404, "not_found", f"no WebSocket route {path[:200]!r}; the hub's WebSocket is /ws"
        )
        hub.activity.refused[refusal.code] += 1
        await deny(scope, send, refusal)

    @app.get(
        "/events",
        summary="Subscribe to several streams in one SSE response",
        description=_EVENTS_DESCRIPTION,
        response_class=SSEResponse,
        response_model=None,
        status_code=200,
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
        access_token: str | None = Query(
            None,
            description="With authorization on: the token, for clients that cannot set "
            "`Authorization: Bearer` nor the `hub_token` cookie (both win over it). Never "
            "logged.",
        ),
    ) -> SSEResponse:
        # Requests are served by HubApp.__call__ before they reach here; this route documents
        # /events and answers where the app is mounted without it.
        return subscribe(request.scope)

    @app.post(
        "/events",
        summary="Subscribe with the selection in a JSON body",
        description="The same subscription, response and errors as `GET /events`, for clients "
        "that cannot put a long selection in a URL (fetch-based SSE clients). A "
        "`Last-Event-ID` header wins over the body's `last_event_id`.",
        response_class=SSEResponse,
        response_model=None,
        status_code=200,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "the merged frames"},
            **_ERRORS,
            408: _PUBLISH_ERRORS[408],
            413: {"model": ErrorBody, "description": "the body is over 64 KiB"},
            415: _PUBLISH_ERRORS[415],
        },
    )
    async def events_posted(
        request: Request,
        selection: Selection,
        last_event_id_header: str | None = Header(
            None,
            alias="Last-Event-ID",
            description="The cursor to resume from; wins over the body.",
        ),
    ) -> SSEResponse:
        # Served by HubApp.__call__ too; this route documents it.
        return respond(*admit(request.scope, selection))

    @app.get(
        "/ws",
        summary="The WebSocket (a GET without Upgrade is refused)",
        description="`/ws` takes the query of `GET /events` and sends each event as one JSON "
        'text message, `{"event", "id", "data"}`; a client publishes with '
        '`{"publish": "<topic>", "data": {...}}`. `/asyncapi.json` describes it.',
        status_code=426,
        responses={426: {"model": ErrorBody, "description": "not a WebSocket handshake"}},
    )
    async def websocket_over_http() -> Response:
        raise RequestError(
            426,
            "upgrade_required",
            "/ws is a WebSocket: open it with a WebSocket client (Upgrade: websocket); for "
            "Server-Sent Events use /events",
            upgrade="websocket",
        )

    app.subscribe = subscribe
    app.subscribe_posted = subscribe_posted
    app.serve_websocket = websocket
    app.activity = hub.activity
    if settings.cors_origins:
        app.cors = CORSMiddleware(app._events_endpoint, **cors)  # type: ignore[arg-type]

    @app.post(
        "/streams/{name}/events",
        status_code=201,
        response_model=Published,
        summary="Publish events to a topic",
        description="The body is one event, or a JSON array of events published in order (all "
        "or none), sent as `Content-Type: application/json`. Each is validated against the "
        "topic's event model; fields the hub fills in (readOnly in the catalog's schema) must "
        "be left out. Each topic's own path below gives its event schema.",
        responses=_PUBLISH_ERRORS,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": ["object", "array"]}}},
            }
        },
    )
    async def publish_events(name: str, request: Request) -> Response:
        # Who may publish is settled before the body is read.
        access = access_of(request.scope)
        access.require_token("publishing")
        name = hub.publishable(name, access).name  # `room/007` is `room/7`
        require_json(request, "publish")
        payload = await read_json(request, settings.max_publish_bytes, settings.body_timeout)
        events = payload if isinstance(payload, list) else [payload]
        name, entries = await hub.publish_as(access, _client(request.scope), name, events)
        body = published_json(name, [entry.position for entry in entries])
        return Response(body, 201, media_type="application/json")

    @app.post(
        "/streams/{name}/{key}/events",
        status_code=201,
        response_model=Published,
        include_in_schema=False,  # each keyed family has its own path in the document
    )
    async def publish_keyed_events(name: str, key: str, request: Request) -> Response:
        return await publish_events(f"{name}/{key}", request)

    @app.get(
        "/streams",
        summary="The catalog of streams",
        description="With authorization on, the streams the caller may read or publish to.",
        responses={401: _ERRORS[401]},
    )
    async def list_streams(request: Request) -> Catalog:
        if not auth.enabled:
            return catalog
        access = access_of(request.scope)
        return Catalog(streams=[described[d.name] for d in registry if access.sees(d)])

    @app.get(
        "/streams/{name}",
        summary="One stream of the catalog",
        responses={401: _ERRORS[401], 404: _ERRORS[404]},
    )
    async def get_stream(name: str, request: Request) -> StreamInfo:
        access = access_of(request.scope)
        if name in described and access.sees(registry[name]):
            return described[name]
        # A stream the caller may not see is as unknown as one that does not exist.
        raise unknown_stream(registry, [name], access)

    @app.get(
        "/streams/{name}/{key}",
        summary="One topic of a keyed family",
        description="The family's entry, named for the key, with the topic's newest position.",
        responses={401: _ERRORS[401], 404: _ERRORS[404], 422: _ERRORS[422]},
    )
    async def get_keyed_stream(name: str, key: str, request: Request) -> StreamInfo:
        if key == "events" and name in registry and not registry[name].keyed:
            # The publish path of a plain topic, not a key of it.
            raise RequestError(
                405,
                "method_not_allowed",
                f"GET is not accepted on {request.url.path!r}; accepted: POST",
                allow=["POST"],
            )
        topic = find_stream(registry, f"{name}/{key}", access_of(request.scope))
        assert isinstance(topic, Topic) and topic.family is not None
        try:
            position = await hub.broker.position(topic.name)
        except BrokerUnavailable as exc:
            raise RequestError(503, "broker_unavailable", str(exc), retry_after=1) from None
        info = described[topic.family.name]
        return info.model_copy(update={"name": topic.name, "position": position})

    document = _Document(app, [t for t in hub.topics.values() if t.producer is None])
    app.openapi = document.full  # type: ignore[method-assign]
    if app.openapi_url:
        # The document names the topics: each caller gets the ones it may publish to.
        app.router.routes = [
            route for route in app.router.routes if getattr(route, "path", None) != app.openapi_url
        ]

        @app.get(app.openapi_url, include_in_schema=False)
        async def openapi_document(request: Request) -> JSONResponse:
            if not auth.enabled:
                return JSONResponse(document.full())
            return JSONResponse(document.for_access(access_of(request.scope)))

        _add_docs(app, app.openapi_url)

    @app.get(
        "/asyncapi.json",
        summary="The AsyncAPI 3.0 document",
        description="Every stream the caller may see as a channel with its parameters and its "
        "event's JSON Schema, and the operations that reach it: SSE (`GET` and `POST "
        "/events`), the WebSocket (`/ws`), publishing.",
        responses={401: _ERRORS[401]},
    )
    async def asyncapi_document(request: Request) -> JSONResponse:
        access = access_of(request.scope)
        visible = [d for d in registry if access.sees(d)]
        publishable = [
            t.name for t in hub.topics.values() if t.producer is None and access.may_publish(t)
        ]
        host = request.headers.get("host", "")[:255] or f"{settings.host}:{settings.port}"
        return JSONResponse(asyncapi.document(visible, publishable, host, auth.enabled))

    if metrics is not None:

        @app.get(
            "/metrics",
            summary="Prometheus metrics",
            description="The hub's figures in the Prometheus text format: connections by "
            "transport, subscriptions, events published and delivered by stream family, bytes "
            "sent, subscribers cut off by reason, refusals by code, broker errors, shared "
            "producers, publish latency. With --workers, every worker's. With "
            "--metrics-token, it asks for `Authorization: Bearer <token>`.",
            response_class=Response,
            responses={
                200: {"content": {"text/plain": {}}, "description": "the exposition"},
                401: {"model": ErrorBody, "description": "the metrics token is missing or wrong"},
            },
        )
        async def get_metrics(request: Request) -> Response:
            assert metrics is not None
            metrics.check(request.headers)
            body, content_type = metrics.exposition()
            return Response(body, media_type=content_type)

    if settings.page:
        add_page(app)

    @app.get("/health", summary="Liveness and current load")
    async def health(request: Request) -> Health:
        buffered, most = hub.broker.buffered()
        producers, standby = hub.producers.names(), hub.producers.standing_by()
        if auth.enabled:  # shared streams named only to those who may see them
            access = access_of(request.scope)
            producers = [n for n in producers if access.sees(registry.lookup(n))]
            standby = [n for n in standby if access.sees(registry.lookup(n))]
        return Health(
            pid=os.getpid(),
            broker=hub.broker.url,
            streams=len(registry),
            subscriptions=hub.activity.subscriptions,
            open_streams=hub.activity.open_streams,
            buffered=buffered,
            max_buffered=most,
            topics=hub.broker.topics(),
            producers=producers,
            standby=standby,
            connections=hub.limits.connections,
            clients=hub.limits.clients(),
            tasks=len(asyncio.all_tasks()),
            open_files=_open_files(),
            rss_bytes=_rss_bytes(),
            loop_lag_ms=round(hub.loop_lag() * 1000, 1),
        )

    return app


# Swagger UI's and ReDoc's files, served by the hub (the package fastapi-offline ships them):
# the documentation works without the internet. The URLs are relative to where the app is
# mounted (`root_path`), as FastAPI's own pages make them.
DOCS_ASSETS = "/docs/assets"


def _add_docs(app: FastAPI, openapi_url: str) -> None:
    """`/docs` (Swagger UI), its OAuth2 redirect, and `/redoc`, from the hub's own files."""
    files = importlib.resources.files("fastapi_offline") / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(files)), name="docs-assets")
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    def root(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        base = root(request)
        return get_swagger_ui_html(
            openapi_url=base + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{base}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{base}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{base}{DOCS_ASSETS}/favicon.png",
            oauth2_redirect_url=base + redirect_url,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        base = root(request)
        return get_redoc_html(
            openapi_url=base + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{base}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{base}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )


def _errors_as_json(schema: dict[str, Any]) -> None:
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content")
                if status[0] in "45" and content:
                    first = next(iter(content.values()))
                    response["content"] = {"application/json": first}


class _Document:
    """The OpenAPI document: FastAPI's, made to say what the hub really sends (errors as JSON
    on every route), with each topic's own publish path, its event schema as the body. Built
    once; `for_access` leaves out the topics a caller may not publish to."""

    def __init__(self, app: FastAPI, topics: list[Topic]) -> None:
        self.app = app
        self.topics = topics
        self._base: dict[str, Any] | None = None
        # each topic's path, operation, and the schemas its body refers to
        self._paths: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {}

    def full(self) -> dict[str, Any]:
        if self.app.openapi_schema is None:
            self.app.openapi_schema = self._assemble(self.topics)
        return self.app.openapi_schema

    def for_access(self, access: Access) -> dict[str, Any]:
        return self._assemble([t for t in self.topics if access.may_publish(t)])

    def _assemble(self, topics: list[Topic]) -> dict[str, Any]:
        if self._base is None:
            base = FastAPI.openapi(self.app)
            self.app.openapi_schema = None  # FastAPI's cache: the full document is ours
            _errors_as_json(base)
            generic = base["paths"].get("/streams/{name}/events", {}).get("post")
            if generic is not None:
                self._paths = {t.name: _topic_path(generic, t) for t in self.topics}
            self._base = base
        paths = dict(self._base["paths"])
        components = dict(self._base.get("components", {}))
        schemas = dict(components.get("schemas", {}))
        for topic in topics:
            if topic.name in self._paths:
                path, operation, defs = self._paths[topic.name]
                paths[path] = {"post": operation}
                schemas.update(defs)
        components["schemas"] = schemas
        return {**self._base, "paths": paths, "components": components}


def _topic_path(
    generic: dict[str, Any], topic: Topic
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A topic's own publish operation, from the generic one: its path, the operation, and
    the schemas its event refers to."""
    event = topic.event_model.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = event.pop("$defs", {})
    # What a publisher sends: the fields the hub fills in are left out, no others allowed.
    properties = {
        name: field
        for name, field in event.get("properties", {}).items()
        if name not in topic.read_only
    }
    event["properties"] = properties
    event["required"] = [name for name in event.get("required", []) if name in properties]
    event["additionalProperties"] = False
    operation = copy.deepcopy(generic)
    operation["operationId"] = f"publish_{topic.name.replace('-', '_')}"
    operation["summary"] = f"Publish events to {topic.name!r}"
    operation["parameters"] = [
        p for p in operation.get("parameters", []) if p.get("name") != "name"
    ]
    path = f"/streams/{topic.name}/events"
    if topic.key_type is not None:
        path = f"/streams/{topic.name}/{{key}}/events"
        operation["summary"] = f"Publish events to a topic of {topic.name!r}"
        operation["parameters"].append(
            {
                "name": "key",
                "in": "path",
                "required": True,
                "description": "the topic's key: 1 to 128 of A-Z a-z 0-9 _ - ~",
                "schema": topic.key_schema(),
            }
        )
    for status in ("404", "405"):
        operation["responses"].pop(status, None)
    body = {"oneOf": [event, {"type": "array", "items": event, "minItems": 1}]}
    operation["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": body}},
    }
    return path, operation, defs


def _open_files() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # not the one listdir itself holds
    except OSError:
        return None


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _client(scope: Scope) -> str:
    """The client's address (the proxy's view of it with --proxy-headers)."""
    client = scope.get("client")
    return client[0] if client else "unknown"


def create_app_from_env() -> HubApp:
    """The factory a reloading server imports; it reads everything from `HUB_*`."""
    return create_app(Settings.from_env())
