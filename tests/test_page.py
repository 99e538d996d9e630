"""The live page at `GET /`, in a real browser (Debian's chromium through Playwright) against
real hubs: choosing streams, watching them merged, publishing, resuming, signing in."""

from __future__ import annotations

import os
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import jwt
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect
from support import free_port, get, publish_chat, room

from hub.testing import HubServer

SCREENSHOT = Path(__file__).parent.parent / "docs" / "page.png"
SECURED = str(Path(__file__).parent / "secured" / "streams.py")
KEY = "a page test secret, long enough for HS256"
WAIT = 15_000  # ms


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(WAIT)
    yield context
    context.close()


def rows(page: Page, stream: str) -> list[str]:
    """The data shown for each event of `stream`, newest first."""
    texts: list[str] = page.locator(f'#events li[data-stream="{stream}"] pre').all_inner_texts()
    return texts


def test_the_page_and_its_files_are_served_with_a_strict_policy(hub_server: HubServer) -> None:
    page = get(hub_server, "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert '<script src="/page/page.js"' in page.text
    for name, media in [("page.js", "text/javascript"), ("page.css", "text/css")]:
        asset = get(hub_server, f"/page/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media)
    missing = get(hub_server, "/page/../app.py")
    assert missing.status_code == 404
    unknown = get(hub_server, "/page/secrets.txt")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == (
        "the page has no file 'secrets.txt'; it has page.js, page.css"
    )


@pytest.fixture(scope="module")
def builtin() -> Iterator[HubServer]:
    """A hub with the built-in streams alone, as a newcomer starts it."""
    with HubServer(args=["--no-entry-points"]) as server:
        yield server


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is no PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_the_page_lists_watches_publishes_and_shares_its_view(
    context: BrowserContext, builtin: HubServer, tmp_path: Path
) -> None:
    hub_server = builtin
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(hub_server.url + "/")

    # The catalog: every stream, its kind and description; forms from the parameters' schema.
    echo = page.locator('#streams li[data-stream="echo"]')
    expect(echo.locator(".description")).to_contain_text("Repeats `message`")
    expect(echo.locator(".kind")).to_have_text("generated")
    listed = page.locator("#streams > li").evaluate_all("items => items.map(i => i.dataset.stream)")
    catalog = get(hub_server, "/streams").json()["streams"]
    assert listed == [info["name"] for info in catalog]
    expect(page.locator('#streams li[data-stream="room"] .kind')).to_have_text("keyed topic")
    message = page.locator('[name="echo.message"]')
    expect(message).to_have_value("hello")  # the default
    interval = page.locator('[name="echo.interval"]')
    assert interval.get_attribute("type") == "number"
    assert interval.get_attribute("min") == "0"  # ge=0
    assert interval.get_attribute("title") == "seconds between events"  # its description
    expect(echo.locator(".hint")).to_contain_text(["default", "seconds between"])
    expect(page.locator('[name="echo.count"]')).to_have_count(0)  # one count field for all

    # Choose echo (with parameters) and a chat room, and watch.
    name, key = "room/lobby", "lobby"  # a hub of its own: the room is this test's
    page.check("#s-echo")
    message.fill("hi from the page")
    interval.fill("0.2")
    page.fill('#streams li[data-stream="room"] .key-input', key)
    page.click("#watch")
    expect(page.locator("#state")).to_have_attribute("data-state", "live")
    expect(page.locator('#events li[data-stream="echo"]').first).to_contain_text("hi from the page")
    cursor = page.locator('#events li[data-stream="echo"] .cursor').first.inner_text()
    assert cursor.startswith("id echo:") and f"{name}:" in cursor

    # Publish to the room from the form generated from its event schema (no received_at: the
    # hub sets it), and see it arrive among the echoes.
    page.select_option("#publish-topic", "room")
    page.click("#publish-button")
    expect(page.locator("#publish-result")).to_have_text(
        "room is keyed: give the key of the topic to publish to"
    )
    page.fill("#publish-key", key)
    fields = page.locator("#publish-fields [name]").evaluate_all("c => c.map(e => e.name)")
    assert fields == ["user", "text"]
    page.fill('#publish-fields [name="user"]', "ana")
    page.fill('#publish-fields [name="text"]', "hello, room")
    page.click("#publish-button")
    expect(page.locator("#publish-result")).to_contain_text("published at")
    expect(page.locator(f'#events li[data-stream="{name}"]').first).to_contain_text("hello, room")
    expect(page.locator("#rates")).to_contain_text(name)

    page.locator("#events li").nth(5).wait_for()  # a few of each for the picture
    # Saved each run (the README's copy with HUB_SCREENSHOT=1), and checked to be the picture.
    shot = SCREENSHOT if os.environ.get("HUB_SCREENSHOT") else tmp_path / "page.png"
    page.screenshot(path=shot)
    assert png_size(shot) == (1280, 800)

    # An invalid event: the API's 422, inline, naming the field.
    page.fill('#publish-fields [name="text"]', "")
    page.click("#publish-button")
    result = page.locator("#publish-result")
    expect(result).to_contain_text("422")
    expect(result).to_have_class("error")
    assert "text" in result.inner_text()

    # The view is in the URL: opened elsewhere, it watches the same selection at once.
    shared = page.url
    assert f"streams=echo%2C{quote(name, safe='')}" in shared
    assert "echo.message=hi+from+the+page" in shared and "echo.interval=0.2" in shared
    # Pause holds what arrives, Clear empties the list.
    page.click("#pause")
    expect(page.locator("#held")).to_contain_text("held")
    page.click("#pause")
    page.click("#clear")
    expect(page.locator('#events li[data-stream="echo"]').first).to_be_visible()

    other = context.new_page()
    other.goto(shared)
    expect(other.locator("#s-echo")).to_be_checked()
    expect(other.locator('#streams li[data-stream="room"] .key-input')).to_have_value(key)
    expect(other.locator("#state")).to_have_attribute("data-state", "live")
    publish_chat(hub_server, name, "for both pages")
    for each in (page, other):
        expect(each.locator(f'#events li[data-stream="{name}"]').first).to_contain_text(
            "for both pages"
        )
    assert problems == []


def test_the_page_resumes_after_the_server_ends_the_connection(
    context: BrowserContext, redis_server: str
) -> None:
    """The hub the page watches restarts; a chat message published meanwhile (through another
    hub on the same Redis) arrives once the browser's EventSource is back, exactly once."""
    broker = f"{redis_server}?prefix=page-{uuid.uuid4().hex[:8]}:"
    port = free_port()
    args = ["--broker", broker, "--port", str(port), "--retry", "200"]
    name = room()
    watched = HubServer(args=args).start()
    other = HubServer(args=["--broker", broker, "--port", "0"]).start()
    try:
        page = context.new_page()
        page.goto(f"{watched.url}/?streams={name}")
        expect(page.locator("#state")).to_have_attribute("data-state", "live")
        publish_chat(other, name, "one")
        expect(page.locator(f'#events li[data-stream="{name}"]').first).to_contain_text("one")

        assert watched.stop() == 0
        expect(page.locator('#events li[data-stream="hub.shutdown"]')).to_have_count(1)
        expect(page.locator("#state")).to_have_attribute("data-state", "reconnecting")
        publish_chat(other, name, "two")  # while the page has no connection

        watched = HubServer(args=args).start()
        expect(page.locator("#reconnects")).to_have_text("reconnects: 1")
        expect(page.locator(f'#events li[data-stream="{name}"]').first).to_contain_text("two")
        publish_chat(other, name, "three")
        expect(page.locator(f'#events li[data-stream="{name}"]').first).to_contain_text("three")
        texts = [shown.split('"text": "')[1].split('"')[0] for shown in rows(page, name)]
        assert texts == ["three", "two", "one"]  # each once, none lost
        expect(page.locator('#events li[data-stream="hub.gap"]')).to_have_count(0)
    finally:
        watched.stop()
        other.stop()


def test_the_page_with_authorization_on_through_a_pasted_token(context: BrowserContext) -> None:
    token = jwt.encode(
        {
            "sub": "ana",
            "exp": int(time.time()) + 300,
            "hub": {"subscribe": ["ticker", "room"], "publish": ["room"]},
        },
        KEY,
        "HS256",
    )
    args = ["--no-builtin-streams", "--no-entry-points"]
    with HubServer(SECURED, args=args, env={"HUB_AUTH_KEY": KEY}) as hub:
        page = context.new_page()
        page.goto(hub.url + "/")
        # Without a token the catalog shows the public streams only.
        expect(page.locator('#streams li[data-stream="whoami"]')).to_have_count(1)
        expect(page.locator('#streams li[data-stream="ticker"]')).to_have_count(0)
        expect(page.locator("#publish-topic option")).to_have_text(["news"])

        page.fill("#token", token)
        page.click("#signin-button")
        expect(page.locator("#who")).to_contain_text("signed in as ana")
        expect(page.locator('#streams li[data-stream="ticker"]')).to_have_count(1)
        expect(page.locator("#publish-topic option")).to_have_text(["news", "room"])
        cookies = {cookie["name"]: cookie["value"] for cookie in context.cookies()}
        assert cookies["hub_token"] == token  # so that EventSource sends it

        page.check("#s-ticker")
        page.check("#s-whoami")
        page.fill("#count", "2")
        page.click("#watch")
        expect(page.locator("#state")).to_have_attribute("data-state", "ended")
        expect(page.locator('#events li[data-stream="hub.end"]')).to_have_count(1)
        expect(page.locator('#events li[data-stream="ticker"]')).to_have_count(2)
        expect(page.locator('#events li[data-stream="whoami"]').first).to_contain_text('"ana"')

        page.select_option("#publish-topic", "room")
        page.fill('#publish-fields [name="text"]', "signed")
        page.click("#publish-button")
        expect(page.locator("#publish-result")).to_contain_text("published at")

        page.click("#signout-button")
        expect(page.locator('#streams li[data-stream="ticker"]')).to_have_count(0)
        assert "hub_token" not in {cookie["name"] for cookie in context.cookies()}


FORMS = """
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from pydantic import Field

from hub import Event, stream


class Choice(Event):
    mode: str
    loud: bool
    level: int


@stream("forms")
async def forms(
    mode: Literal["fast", "slow"] = "fast",
    loud: bool = False,
    level: Annotated[int, Field(ge=1, le=5, description="how much")] = 3,
) -> AsyncIterator[Choice]:
    \"\"\"Says what it was given, then fails.\"\"\"
    yield Choice(mode=mode, loud=loud, level=level)
    raise RuntimeError("out of choices")
"""


def test_forms_follow_the_schema_and_control_events_are_marked(
    context: BrowserContext, tmp_path: Path
) -> None:
    plugin = tmp_path / "forms.py"
    plugin.write_text(FORMS)
    with HubServer(str(plugin), args=["--no-builtin-streams", "--no-entry-points"]) as hub:
        page = context.new_page()
        page.goto(f"{hub.url}/?streams=forms&forms.mode=slow&forms.loud=true&forms.level=4")
        mode = page.locator('[name="forms.mode"]')
        assert mode.evaluate("select => [...select.options].map(o => o.value)") == ["fast", "slow"]
        expect(mode).to_have_value("slow")  # from the shared URL
        expect(page.locator('[name="forms.loud"]')).to_be_checked()
        level = page.locator('[name="forms.level"]')
        assert (level.get_attribute("min"), level.get_attribute("max")) == ("1", "5")
        expect(level).to_have_value("4")
        # The values reached the stream as typed; its failure and the end are marked rows.
        expect(page.locator('#events li[data-stream="forms"] pre')).to_have_text(
            '{\n  "mode": "slow",\n  "loud": true,\n  "level": 4\n}'
        )
        error = page.locator('#events li[data-stream="hub.error"]')
        expect(error).to_have_class("control hub-error")
        expect(error).to_contain_text("out of choices")
        expect(page.locator("#state")).to_have_attribute("data-state", "ended")

        # Back to the defaults: nothing is sent for a parameter left at its default.
        mode.select_option("fast")
        page.uncheck('[name="forms.loud"]')
        level.fill("3")
        page.click("#watch")
        expect(page.locator('#events li[data-stream="forms"]')).to_have_count(2)
        assert page.url.endswith("/?streams=forms")


def test_the_screenshot_in_the_readme_is_a_real_one() -> None:
    """docs/page.png is what the browser test takes (HUB_SCREENSHOT=1 writes it again)."""
    assert png_size(SCREENSHOT) == (1280, 800)
    assert SCREENSHOT.stat().st_size > 20_000  # a page with content, not a blank one
