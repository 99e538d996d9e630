"""Hub streams inside your own FastAPI app, behind your own login.

    pip install -e . && uvicorn hub.examples.embedded:app --port 8001
    curl -N -H 'X-API-Key: key-ana' localhost:8001/me/events
    curl -N 'localhost:8001/hub/events?streams=echo&count=2'

`/me/events` is a route of this app: its own dependency decides who the caller is, and
`hub.subscribe()` serves that user's streams through sse-starlette. The hub's whole API is
mounted under `/hub` as well (`/hub/events`, `/hub/ws`, `/hub/streams`, ...).
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Header, HTTPException
from sse_starlette import EventSourceResponse

import hub

hub_app = hub.create_app()  # the streams of `streams/` and installed plugins; HUB_* settings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Starlette does not run a mounted app's lifespan: run the hub's (it starts the hub).
    async with hub_app.router.lifespan_context(hub_app):
        yield


app = FastAPI(lifespan=lifespan)
app.mount("/hub", hub_app)

API_KEYS = {"key-ana": "ana", "key-bob": "bob"}  # your own login, whatever it is


def current_user(x_api_key: str = Header()) -> str:
    user = API_KEYS.get(x_api_key)
    if user is None:
        raise HTTPException(401, "unknown API key")
    return user


@app.get("/me/events")
async def my_events(
    user: str = Depends(current_user),
    last_event_id: str | None = Header(None),
) -> EventSourceResponse:
    # The user's own chat room and a greeting, merged, with the hub's ids: a reconnecting
    # EventSource sends Last-Event-ID and resumes both exactly.
    return EventSourceResponse(
        hub.subscribe(
            ["echo", f"room/{user}"],
            {"message": f"hello {user}", "interval": 5},
            last_event_id=last_event_id,
            principal=hub.Principal(sub=user),
        )
    )
