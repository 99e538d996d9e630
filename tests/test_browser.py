"""A real browser against a real hub: Debian's chromium, driven by Playwright (never a browser
that Playwright downloads)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from playwright.sync_api import Browser
from support import together

from hub.testing import HubServer

PLUGIN = str(Path(__file__).parent / "secured" / "streams.py")
KEY = "a browser test secret, long enough for HS256"

# The page subscribes to a private stream (it needs the cookie) and a public one that says who
# the hub thinks is calling; it reports through window.outcome.
PAGE = """<!doctype html>
<meta charset="utf-8">
<title>hub test page</title>
<script>
const params = new URLSearchParams(location.search);
const hub = params.get("hub");
const credentials = params.get("credentials") === "1";
const received = [];
const source = new EventSource(hub + "/events?streams=ticker,whoami&count=1",
                               {withCredentials: credentials});
for (const name of ["ticker", "whoami"]) {
  source.addEventListener(name, (event) => {
    received.push({event: name, data: JSON.parse(event.data), id: event.lastEventId});
    if (received.length === 2) {
      source.close();
      window.outcome = {ok: true, received};
    }
  });
}
source.onerror = () => {
  if (!window.outcome) window.outcome = {ok: false, readyState: source.readyState, received};
  source.close();
};
</script>
"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
        body = PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def page_origin() -> Iterator[str]:
    """A page on another port of 127.0.0.1: another origin, the same site (so that the
    browser keeps the cookie, and CORS decides)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _outcome(browser: Browser, page_url: str, hub: HubServer, token: str) -> dict[str, Any]:
    context = browser.new_context()
    try:
        context.add_cookies([{"name": "hub_token", "value": token, "url": hub.url}])
        page = context.new_page()
        page.goto(page_url)
        page.wait_for_function("window.outcome !== undefined", timeout=15_000)
        outcome: dict[str, Any] = page.evaluate("window.outcome")
        return outcome
    finally:
        context.close()


def test_a_cross_origin_event_source_with_cookie_credentials(
    browser: Browser, page_origin: str
) -> None:
    args = ["--no-builtin-streams", "--no-entry-points", "--cors-origin", page_origin]
    token = jwt.encode(
        {"sub": "browser-user", "exp": int(time.time()) + 300, "hub": {"subscribe": ["ticker"]}},
        KEY,
        "HS256",
    )
    hub = HubServer(PLUGIN, args=args, env={"HUB_AUTH_KEY": KEY})
    anyone = HubServer(PLUGIN, args=[*args[:2], "--cors-origin", "*"], env={"HUB_AUTH_KEY": KEY})
    with together(hub, anyone):
        url = f"{page_origin}/?hub={hub.url}"
        outcome = _outcome(browser, url + "&credentials=1", hub, token)
        assert outcome["ok"], outcome
        by_stream = {item["event"]: item for item in outcome["received"]}
        assert by_stream["whoami"]["data"]["sub"] == "browser-user"  # the cookie's caller
        assert by_stream["ticker"]["id"].startswith("ticker:")
        # Without credentials the browser sends no cookie: the private stream is refused, and
        # an EventSource gives up (readyState CLOSED) on a 401.
        refused = _outcome(browser, url + "&credentials=0", hub, token)
        assert refused == {"ok": False, "readyState": 2, "received": []}
        # The hub never allows credentials to any origin ("*"): a page from another origin gets
        # nothing, even with the cookie.
        outcome = _outcome(browser, f"{page_origin}/?hub={anyone.url}&credentials=1", anyone, token)
        assert outcome == {"ok": False, "readyState": 2, "received": []}
