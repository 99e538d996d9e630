"""Authorization end to end: JWT grants per stream, public streams, the caller in plugins,
the catalog per caller, expiry, and the token kept out of the logs; a real `hub serve`, real
clients."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from support import TIMEOUT

from hub import Event, Hub, PluginError, Principal, Registry, Settings, stream
from hub.auth import Auth, AuthConfigError, redact
from hub.cli import main
from hub.subscription import RequestError
from hub.testing import HubServer, acollect, collect, parse_events

PLUGIN = str(Path(__file__).parent / "secured" / "streams.py")
KEY = "a test secret that is long enough for HS256 (32+ bytes)"
AUDIENCE = "hub-tests"
ISSUER = "https://issuer.test"
BASE_ARGS = [
    "--no-builtin-streams",
    "--no-entry-points",
    "--public",
    "status",
    "--auth-audience",
    AUDIENCE,
    "--auth-issuer",
    ISSUER,
    "--ping-interval",
    "0.5",
    "--retry",
    "500",
]


def mint(
    sub: str | None = "ana",
    *,
    subscribe: list[str] | None = None,
    publish: list[str] | None = None,
    expires_in: float | None = 300,
    key: Any = KEY,
    algorithm: str = "HS256",
    **claims: Any,
) -> str:
    """A token as a backend would mint it for this hub."""
    payload: dict[str, Any] = {"aud": AUDIENCE, "iss": ISSUER}
    if sub is not None:
        payload["sub"] = sub
    if expires_in is not None:
        payload["exp"] = int(time.time() + expires_in)
    if subscribe is not None or publish is not None:
        payload["hub"] = {"subscribe": subscribe or [], "publish": publish or []}
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}".strip()}


@pytest.fixture(scope="module")
def server() -> Iterator[HubServer]:
    with HubServer(PLUGIN, args=BASE_ARGS, env={"HUB_AUTH_KEY": KEY}) as hub:
        yield hub


def status_of(
    server: HubServer, streams: str, *, headers: dict[str, str] | None = None, **params: Any
) -> tuple[int, dict[str, Any], httpx.Headers]:
    """The status of a subscription (closed at once when it opens), and its error body."""
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        with client.stream(
            "GET", "/events", params={"streams": streams, **params}, headers=headers
        ) as response:
            body = json.loads(response.read()) if response.status_code != 200 else {}
            return response.status_code, body, response.headers


def first_events(
    server: HubServer,
    streams: str,
    limit: int,
    headers: dict[str, str] | None = None,
    **params: Any,
) -> list[Any]:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        response = client.get(
            "/events", params={"streams": streams, "count": limit, **params}, headers=headers
        )
    assert response.status_code == 200, response.text
    return [e for e in parse_events(response.text) if not e.event.startswith("hub.")]


def publish(server: HubServer, name: str, token: str | None, text: str = "hi") -> httpx.Response:
    headers = bearer(token) if token is not None else {}
    return httpx.post(
        f"{server.url}/streams/{name}/events", json={"text": text}, headers=headers, timeout=TIMEOUT
    )


# -- grants ----------------------------------------------------------------------------------

GRANTS = [["room"], ["acme_*"], ["*"], ["news", "acme_bills"], []]
STREAMS = ["room", "acme_orders", "acme_bills", "ticker"]


def granted(patterns: list[str], name: str) -> bool:
    return any(
        p == name or p == "*" or (p.endswith("*") and name.startswith(p[:-1])) for p in patterns
    )


@pytest.mark.parametrize("patterns", GRANTS, ids=lambda p: ",".join(p) or "none")
def test_subscribe_grants(server: HubServer, patterns: list[str]) -> None:
    token = mint(subscribe=patterns, publish=["*"])  # publish grants do not let anyone read
    for name in STREAMS:
        status, body, headers = status_of(server, name, headers=bearer(token))
        if granted(patterns, name):
            assert status == 200, (name, body)
        else:
            assert status == 403, (name, body)
            assert body["error"]["code"] == "forbidden"
            assert body["error"]["streams"] == [name]
            assert "insufficient_scope" in headers["www-authenticate"]


def test_a_403_lists_every_stream_refused(server: HubServer) -> None:
    token = mint(subscribe=["room"])
    status, body, _ = status_of(server, "ticker,room,acme_bills,news", headers=bearer(token))
    assert status == 403
    assert body["error"]["streams"] == ["acme_bills", "ticker"]
    assert "acme_bills" in body["error"]["message"]


@pytest.mark.parametrize("patterns", GRANTS, ids=lambda p: ",".join(p) or "none")
def test_publish_grants(server: HubServer, patterns: list[str]) -> None:
    # Subscribe grants to everything: seeing a topic is not publishing to it.
    token = mint(subscribe=["*"], publish=patterns)
    for name in ["room", "acme_orders", "acme_bills", "news"]:
        response = publish(server, name, token)
        if granted(patterns, name):
            assert response.status_code == 201, (name, response.text)
        else:
            assert response.status_code == 403, (name, response.text)
            assert response.json()["error"]["streams"] == [name]


def test_publishing_always_needs_a_token(server: HubServer) -> None:
    for name in ["room", "news"]:  # a public topic too
        response = publish(server, name, None)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"


def test_publishing_to_an_unseen_stream_is_an_unknown_stream(server: HubServer) -> None:
    token = mint(subscribe=["room"], publish=["room"])
    response = publish(server, "acme_orders", token)
    assert response.status_code == 404
    assert response.json()["error"]["available"] == ["room"]
    # Seen (readable) but not a topic: the grant is checked first, then the kind.
    token = mint(subscribe=["ticker"], publish=["ticker"])
    assert publish(server, "ticker", token).status_code == 405


def test_the_body_of_an_unauthorized_publish_is_not_read(server: HubServer) -> None:
    # A 401 comes before the body: 100 MB announced, none of it sent.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /streams/room/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n"
        )
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 401"), head


def test_grant_patterns() -> None:
    ana = Principal(sub="ana", subscribe=("chat", "acme_*", "*_log"), publish=("chat",))
    assert [ana.may_subscribe(n) for n in ["chat", "acme_x", "acme_", "x_log", "chats", "acm"]] == [
        True,
        True,
        True,
        True,
        False,
        False,
    ]
    assert ana.may_publish("chat") and not ana.may_publish("acme_x")
    assert not Principal(sub="nobody").may_subscribe("chat")
    assert Principal(subscribe=("*",)).may_subscribe("anything-at_all")
    # Many stars match in linear time (a regular expression of `.*`s would backtrack for
    # ages on a name that almost matches).
    stars = Principal(subscribe=("a*" * 40 + "b",))
    assert not stars.may_subscribe("a" * 64)


def test_sub_in_a_grant_stands_for_the_callers_own() -> None:
    ana = Principal(sub="ana", subscribe=("inbox_{sub}", "news"), publish=("outbox_{sub}",))
    assert ana.may_subscribe("inbox_ana") and ana.may_subscribe("news")
    assert not ana.may_subscribe("inbox_bob") and not ana.may_subscribe("inbox_{sub}")
    assert ana.may_publish("outbox_ana") and not ana.may_publish("outbox_bob")
    # A sub that could widen the pattern or step out of a name makes it match nothing.
    for sub in ["*", "a*", "a/b", "", "x" * 129, None]:
        other = Principal(sub=sub, subscribe=("inbox_{sub}", "news"))
        assert not other.may_subscribe("inbox_a") and not other.may_subscribe("inbox_ab")
        assert other.may_subscribe("news")  # the patterns without {sub} still hold


def test_one_user_is_refused_anothers_stream(server: HubServer) -> None:
    orders = mint("orders", subscribe=["acme_{sub}"])
    assert status_of(server, "acme_orders", headers=bearer(orders))[0] == 200
    status, body, _ = status_of(server, "acme_bills", headers=bearer(orders))
    assert status == 403 and body["error"]["streams"] == ["acme_bills"]
    assert catalog(server, bearer(orders)) == ["acme_orders", "inbox", "news", "status", "whoami"]


def test_grants_in_the_token_are_checked() -> None:
    assert Principal.from_claims({"sub": "a", "hub": {"subscribe": ["x*"]}}).subscribe == ("x*",)
    for claims, why in [
        ({"hub": ["chat"]}, "must be an object"),
        ({"hub": {"read": ["chat"]}}, "unknown keys"),
        ({"hub": {"subscribe": "chat"}}, "must be a list"),
        ({"hub": {"subscribe": [1]}}, "a pattern is"),
        ({"hub": {"publish": ["a?b"]}}, "a pattern is"),
        ({"hub": {"publish": ["x" * 300]}}, "a pattern is"),
        ({"sub": 7}, '"sub" must be a string'),
    ]:
        with pytest.raises(ValueError, match=why):
            Principal.from_claims(claims)


# -- tokens ----------------------------------------------------------------------------------


def whoami(server: HubServer, **options: Any) -> dict[str, Any]:
    events = first_events(server, "whoami", 1, **options)
    return dict(events[0].json())


def test_the_token_from_the_header_the_cookie_or_the_query(server: HubServer) -> None:
    def token(sub: str) -> str:
        return mint(sub, subscribe=["whoami"], email=f"{sub}@example.com")

    assert whoami(server)["sub"] is None
    assert whoami(server, headers=bearer(token("hana"))) == {
        "sub": "hana",
        "email": "hana@example.com",
    }
    assert whoami(server, headers={"Cookie": f"hub_token={token('coco')}"})["sub"] == "coco"
    assert whoami(server, access_token=token("quinn"))["sub"] == "quinn"
    # The first found wins: the header, then the cookie, then the query.
    both = {**bearer(token("hana")), "Cookie": f"hub_token={token('coco')}"}
    assert whoami(server, headers=both, access_token=token("quinn"))["sub"] == "hana"
    cookie = {"Cookie": f"other=1; hub_token={token('coco')}"}
    assert whoami(server, headers=cookie, access_token=token("quinn"))["sub"] == "coco"


BAD_TOKENS = {
    "expired": lambda: mint(subscribe=["*"], expires_in=-60),
    "not yet valid": lambda: mint(subscribe=["*"], nbf=int(time.time()) + 600),
    "wrongly signed": lambda: mint(
        subscribe=["*"], key="another secret, also 32 bytes long or more"
    ),
    "wrong audience": lambda: mint(subscribe=["*"], aud="another-hub"),
    "no audience": lambda: mint(subscribe=["*"], aud=None),
    "wrong issuer": lambda: mint(subscribe=["*"], iss="https://elsewhere.test"),
    "malformed": lambda: "not.a.token",
    "empty": lambda: "",
    "alg none": lambda: jwt.encode(
        {"aud": AUDIENCE, "iss": ISSUER, "hub": {"subscribe": ["*"]}}, None, "none"
    ),
    "bad grants": lambda: mint(hub={"subscribe": "room"}),
}
WHY = {
    "expired": "expired",
    "not yet valid": "not valid yet",
    "wrongly signed": "signature",
    "wrong audience": "audience",
    "no audience": "aud",
    "wrong issuer": "issuer",
    "malformed": "malformed",
    "empty": "malformed",
    "alg none": "algorithm",
    "bad grants": "hub.subscribe",
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_a_token_that_does_not_verify_is_a_401(server: HubServer, case: str) -> None:
    token = BAD_TOKENS[case]()
    for options in ({"headers": bearer(token)}, {"access_token": token}):
        # Even for a public stream: a token that is sent is checked.
        status, body, headers = status_of(server, "news", **options)  # type: ignore[arg-type]
        assert status == 401, (case, body)
        assert body["error"]["code"] == "unauthorized"
        assert WHY[case] in body["error"]["message"], body
        assert headers["www-authenticate"].startswith('Bearer error="invalid_token"')
        if token:
            assert token not in json.dumps(body)


def test_without_a_token_a_private_stream_is_a_401(server: HubServer) -> None:
    status, body, headers = status_of(server, "room")
    assert status == 401
    assert headers["www-authenticate"] == "Bearer"
    assert "needs a token" in body["error"]["message"]


def test_the_leeway_lets_a_clock_skew_by() -> None:
    auth = Auth(key=KEY.encode(), leeway=30, audience=AUDIENCE, issuer=ISSUER)
    late = mint(expires_in=-10, subscribe=["room"])
    assert auth.verify(late).may_subscribe("room")
    early = mint(nbf=int(time.time()) + 10, subscribe=["room"])
    assert auth.verify(early).sub == "ana"
    strict = Auth(key=KEY.encode(), leeway=0, audience=AUDIENCE, issuer=ISSUER)
    with pytest.raises(RequestError) as refused:
        strict.verify(late)
    assert refused.value.status == 401


def _keys(kind: str) -> tuple[Any, bytes, Any]:
    if kind == "RS256":
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        other: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
        other = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, pem, other


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_public_key_tokens(tmp_path: Path, algorithm: str) -> None:
    private, pem, other = _keys(algorithm)
    key_file = tmp_path / "hub.pem"
    key_file.write_bytes(pem)
    args = [*BASE_ARGS, "--auth-public-key", str(key_file)]
    with HubServer(PLUGIN, args=args) as hub:
        good = mint("pk", subscribe=["whoami", "room"], key=private, algorithm=algorithm)
        assert whoami(hub, headers=bearer(good))["sub"] == "pk"
        assert status_of(hub, "room", headers=bearer(good))[0] == 200
        forged = mint("pk", subscribe=["*"], key=other, algorithm=algorithm)
        status, body, _ = status_of(hub, "room", headers=bearer(forged))
        assert status == 401 and "signature" in body["error"]["message"]
        # The public key as an HS256 secret (algorithm confusion) is refused.
        confused = mint("pk", subscribe=["*"], key=KEY, algorithm="HS256")
        status, body, _ = status_of(hub, "room", headers=bearer(confused))
        assert status == 401 and "algorithm" in body["error"]["message"]
    assert "authorization: on: " + algorithm in hub.output


# -- public streams --------------------------------------------------------------------------


def test_public_streams_need_no_token(server: HubServer) -> None:
    # news is public in code, status by flag: together, without a token.
    events = first_events(server, "status,whoami", 2, **{"status.interval": 0})
    assert {e.event for e in events} == {"status", "whoami"}
    # A public and a private stream together: the private one needs the token.
    status, body, _ = status_of(server, "news,room")
    assert status == 401 and "'room'" in body["error"]["message"] and "news" not in str(body)
    assert status_of(server, "news,status")[0] == 200
    token = mint(subscribe=["room"])
    assert status_of(server, "news,room,status", headers=bearer(token))[0] == 200


def test_a_stream_that_serves_the_caller_refuses_anonymous_ones(server: HubServer) -> None:
    status, body, _ = status_of(server, "inbox")
    assert status == 401 and "signed-in caller" in body["error"]["message"]
    # Any token will do (the stream is public); each caller gets its own data.
    ana = [e.json()["text"] for e in first_events(server, "inbox", 5, headers=bearer(mint("ana")))]
    bob = [e.json()["text"] for e in first_events(server, "inbox", 5, headers=bearer(mint("bob")))]
    assert ana == ["your order shipped", "a new follower"]
    assert bob == ["your invoice is ready"]


def test_the_grant_is_checked_before_the_parameters(server: HubServer) -> None:
    # A stream the caller may not read does not tell it its parameters.
    status, body, _ = status_of(server, "ticker", headers=bearer(mint(subscribe=[])), nope="1")
    assert status == 403, body


# -- the catalog -----------------------------------------------------------------------------


def catalog(server: HubServer, headers: dict[str, str] | None = None) -> list[str]:
    response = httpx.get(f"{server.url}/streams", headers=headers, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return [s["name"] for s in response.json()["streams"]]


def test_the_catalog_shows_each_caller_its_own_streams(server: HubServer) -> None:
    public = ["inbox", "news", "status", "whoami"]
    assert catalog(server) == public
    assert catalog(server, bearer(mint(subscribe=["acme_*"]))) == sorted(
        [*public, "acme_bills", "acme_orders"]
    )
    assert catalog(server, bearer(mint(publish=["room"]))) == sorted([*public, "room"])
    everything = ["acme_bills", "acme_orders", "inbox", "news", "pulse", "room", "status"]
    assert catalog(server, bearer(mint(subscribe=["*"]))) == [*everything, "ticker", "whoami"]
    bad = httpx.get(f"{server.url}/streams", headers=bearer("nope"), timeout=TIMEOUT)
    assert bad.status_code == 401


def test_a_hidden_stream_is_a_404(server: HubServer) -> None:
    hidden = httpx.get(f"{server.url}/streams/ticker", timeout=TIMEOUT)
    missing = httpx.get(f"{server.url}/streams/nope", timeout=TIMEOUT)
    for response in (hidden, missing):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "unknown_stream"
        assert "ticker" not in json.dumps(response.json()["error"]["available"])
    shown = httpx.get(
        f"{server.url}/streams/ticker", headers=bearer(mint(subscribe=["ticker"])), timeout=TIMEOUT
    )
    assert shown.status_code == 200 and shown.json()["name"] == "ticker"
    # Nor does an unknown stream in a subscription list the hidden ones.
    status, body, _ = status_of(server, "nope")
    assert status == 404 and "ticker" not in json.dumps(body) and "room" not in json.dumps(body)


def test_the_openapi_document_names_only_the_callers_topics(server: HubServer) -> None:
    def topics(headers: dict[str, str] | None = None) -> set[str]:
        document = httpx.get(f"{server.url}/openapi.json", headers=headers, timeout=TIMEOUT)
        assert document.status_code == 200
        return {
            path.split("/")[2]
            for path in document.json()["paths"]
            if path.startswith("/streams/") and "{name}" not in path
        }

    assert topics() == set()
    assert topics(bearer(mint(publish=["acme_*"]))) == {"acme_orders", "acme_bills"}
    assert topics(bearer(mint(publish=["*"]))) == {"room", "news", "acme_orders", "acme_bills"}


def test_health_names_only_visible_shared_streams(server: HubServer) -> None:
    def producers(headers: dict[str, str] | None = None) -> list[str]:
        response = httpx.get(f"{server.url}/health", headers=headers, timeout=TIMEOUT)
        assert response.status_code == 200
        return list(response.json()["producers"])

    assert producers(bearer(mint(subscribe=["pulse"]))) == ["pulse"]  # eager: it runs
    assert producers() == []
    assert producers(bearer(mint(subscribe=["room"]))) == []


# -- expiry ----------------------------------------------------------------------------------


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, body = out + body[:size], body[size + 2 :]
    return out


def _read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    received = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = sock.recv(65536)
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the connection was still open: {received[-500:]!r}")


def test_expiry_ends_a_live_stream_and_closes_the_connection() -> None:
    with HubServer(
        PLUGIN, args=[*BASE_ARGS, "--auth-leeway", "0"], env={"HUB_AUTH_KEY": KEY}
    ) as hub:
        token = mint(subscribe=["room"], publish=["room"], expires_in=2)
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as sock:
            sock.sendall(
                b"GET /events?streams=room HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer " + token.encode() + b"\r\n\r\n"
            )
            raw = _read_until_closed(sock, started + 8)
        elapsed = time.monotonic() - started
        assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
        text = _dechunk(raw.split(b"\r\n\r\n", 1)[1]).decode()
        frames = parse_events(text)
        # The last frame, and the response ended properly before the connection closed.
        assert frames[-1].event == "hub.expired", frames
        assert "expired" in frames[-1].json()["reason"]
        assert raw.endswith(b"0\r\n\r\n")
        assert 0.5 < elapsed < 5.0, elapsed
        # The client reconnects with a fresh token and its cursor, and misses nothing.
        cursor = re.findall(r"id: (\S+)", text)[-1]
        fresh = mint(subscribe=["room"], publish=["room"], expires_in=300)
        assert publish(hub, "room", fresh, "while away").status_code == 201
        events = first_events(hub, "room", 1, headers={**bearer(fresh), "Last-Event-ID": cursor})
        assert [e.json()["text"] for e in events] == ["while away"]
    assert "its token expired" in hub.output


# -- the caller in plugins -------------------------------------------------------------------


def test_a_principal_reaches_the_plugin_through_hub_testing() -> None:
    registry = Registry()
    registry.load(PLUGIN)
    events = collect("whoami", 1, registry=registry, principal=Principal(sub="tess"))
    assert events[0].json() == {"sub": "tess", "email": None}
    events = collect(
        "whoami", 1, registry=registry, principal={"sub": "tom", "email": "t@example.com"}
    )
    assert events[0].json() == {"sub": "tom", "email": "t@example.com"}
    assert collect("whoami", 1, registry=registry)[0].json()["sub"] is None
    inbox = collect("inbox", 5, registry=registry, principal=Principal(sub="bob"))
    assert [e.json()["text"] for e in inbox] == ["your invoice is ready"]
    with pytest.raises(RequestError) as refused:
        collect("inbox", 1, registry=registry)
    assert refused.value.status == 401


@pytest.mark.anyio
async def test_hub_testing_checks_grants_on_a_hub_with_auth() -> None:
    registry = Registry()
    registry.load(PLUGIN)
    async with Hub(registry, Settings(auth_key=KEY)) as hub:
        events = await acollect(
            "ticker", 1, hub=hub, principal={"sub": "ana", "hub": {"subscribe": ["tick*"]}}
        )
        assert events[0].event == "ticker"
        with pytest.raises(RequestError) as refused:
            await acollect("ticker", 1, hub=hub, principal=Principal(sub="ana"))
        assert refused.value.status == 403


# -- logs, configuration ---------------------------------------------------------------------


def test_the_query_token_is_never_logged(server: HubServer) -> None:
    logged = len(server.lines)  # the shared hub's log (at info, the default): this test's part
    good = mint(subscribe=["*"])
    bad = mint(subscribe=["*"], expires_in=-60)
    first_events(server, "ticker", 1, access_token=good)
    assert status_of(server, "ticker", access_token=bad)[0] == 401
    httpx.get(f"{server.url}/streams?access_token={good}", timeout=TIMEOUT)
    last = f"/nowhere-{uuid.uuid4().hex}"
    httpx.get(f"{server.url}{last}?access%5Ftoken={good}", timeout=TIMEOUT)
    deadline = time.monotonic() + 5
    while not any(last in line for line in server.lines[logged:]):  # read by a thread
        assert time.monotonic() < deadline, "the last request was never logged"
        time.sleep(0.01)
    output = "".join(server.lines[logged:])
    assert "access_token=[redacted]" in output
    for token in (good, bad):
        assert token not in output
        assert token.split(".")[2] not in output  # nor its signature alone


def test_redact() -> None:
    assert redact("streams=a&access_token=abc.def.ghi&count=1") == (
        "streams=a&access_token=[redacted]&count=1"
    )
    assert redact('"GET /events?access_token=x HTTP/1.1" 200') == (
        '"GET /events?access_token=[redacted] HTTP/1.1" 200'
    )
    assert redact("ACCESS%5FTOKEN=x") == "ACCESS%5FTOKEN=[redacted]"
    assert redact("streams=token") == "streams=token"


def test_auth_configuration_mistakes_stop_the_start(tmp_path: Path, capsys: Any) -> None:
    with pytest.raises(AuthConfigError, match="at least 32"):
        Auth(key=b"short")
    _, pem, _ = _keys("ES256")
    with pytest.raises(AuthConfigError, match="not both"):
        Auth(key=KEY.encode(), public_key=pem)
    with pytest.raises(AuthConfigError, match="PEM"):
        Auth(public_key=b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    small_pem = small.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(AuthConfigError, match="2048"):
        Auth(public_key=small_pem)
    missing = tmp_path / "missing.pem"
    assert main(["serve", "--auth-public-key", str(missing), "--port", "0"]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert main(["serve", "--auth-key", "short", "--port", "0"]) == 2
    assert "at least 32" in capsys.readouterr().err


@pytest.mark.anyio
async def test_a_hub_without_auth_on_a_public_interface_warns(caplog: Any) -> None:
    caplog.set_level(logging.INFO, "hub")
    async with Hub(Registry(), Settings(host="0.0.0.0", public=("nothing_*",))):
        pass
    assert "anyone who can reach it may read every stream" in caplog.text
    assert "--public 'nothing_*' matches no stream" in caplog.text
    caplog.clear()
    async with Hub(Registry(), Settings(host="127.0.0.1")):
        pass
    async with Hub(Registry(), Settings(host="0.0.0.0", auth_key=KEY)):
        pass
    assert "anyone who can reach it" not in caplog.text


def test_the_secret_stays_out_of_repr() -> None:
    assert KEY not in repr(Settings(auth_key=KEY))


class Nothing(Event):
    pass


def test_a_principal_parameter_is_checked_when_the_plugin_loads() -> None:
    with pytest.raises(PluginError, match="only one parameter may be a Principal"):

        @stream("two_callers")
        async def two(a: Principal, b: Principal | None) -> AsyncIterator[Nothing]:
            yield Nothing()

    with pytest.raises(PluginError, match="cannot take parameters"):

        @stream("shared_caller", shared=True)
        async def shared(me: Principal | None) -> AsyncIterator[Nothing]:
            yield Nothing()

    @stream("fine")
    async def fine(me: Principal | None, limit: int = 3) -> AsyncIterator[Nothing]:
        yield Nothing()

    # Not a query parameter: the catalog does not list it.
    assert set(fine.parameters.model_fields) == {"count", "limit"}
    assert fine.principal_parameter == "me" and not fine.principal_required


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_json_ish = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_segment = st.one_of(
    st.text(max_size=60),
    _json_ish.map(lambda value: _b64(json.dumps(value).encode())),
    st.binary(max_size=60).map(_b64),
    st.just(_b64(b"[" * 3000 + b"]" * 3000)),
)
_FUZZ_AUTHS = {
    "HS256": Auth(key=KEY.encode()),
    "RS256": Auth(public_key=_keys("RS256")[1]),
    "ES256": Auth(public_key=_keys("ES256")[1]),
}


@settings(max_examples=150, deadline=None, database=None)
@given(
    header=st.one_of(
        _segment,
        st.sampled_from(["RS256", "ES256", "HS256", "none", "PS256", "EdDSA"]).map(
            lambda alg: _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
        ),
    ),
    payload=_segment,
    signature=st.one_of(st.text(max_size=100), st.binary(max_size=300).map(_b64)),
    dots=st.integers(0, 4),
)
def test_no_token_is_anything_but_a_401(
    header: str, payload: str, signature: str, dots: int
) -> None:
    token = ".".join([header, payload, signature][: max(dots, 1)]) + "." * max(dots - 2, 0)
    for auth in _FUZZ_AUTHS.values():
        with pytest.raises(RequestError) as refused:
            auth.verify(token)
        assert refused.value.status == 401
        if len(token) > 20:  # the message never repeats the token
            assert token not in refused.value.message


def test_recent_tokens_are_remembered_until_they_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    import hub.auth

    auth = Auth(key=KEY.encode(), audience=AUDIENCE, issuer=ISSUER, leeway=0)
    token = mint(subscribe=["room"], expires_in=100)
    first = auth.verify(token)
    assert auth.verify(token) is first  # a publisher's next POST: no second signature check
    later = time.time() + 200
    monkeypatch.setattr(hub.auth.time, "time", lambda: later)
    # Past its expiry the remembered principal is not used: the token is verified afresh
    # (here pyjwt's own clock still accepts it, so a new principal comes back).
    assert auth.verify(token) is not first
    monkeypatch.undo()
    for n in range(hub.auth.RECENT_TOKENS + 50):
        auth.verify(mint(f"user{n}", subscribe=["room"]))
    assert len(auth._recent) == hub.auth.RECENT_TOKENS
