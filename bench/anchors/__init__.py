"""Anchor servers: what the hub is measured against.

- `bare`: a bare ASGI app on uvicorn (uvloop + httptools) that sends one pre-encoded SSE frame
  per ASGI `send`, as fast as the client takes them: the per-frame ceiling of the stack.
- `sse`: FastAPI + sse-starlette yielding dict events shaped like the hub's `echo`, and an idle
  endpoint that holds the connection open without sending.
- nchan (nginx, C) is configured by `bench/nchan.conf` and started by `bench.servers`.

Each runs as `python -m bench.anchors.NAME --port P`.
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn


def run(app: Any, description: str) -> None:
    """Serve `app` on loopback with uvloop and httptools, without an access log."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free one")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=args.log_level,
    )
