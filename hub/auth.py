"""Who is calling, and what it may do: tokens, grants, public streams, the `Principal`.

Authorization is off unless a key is configured (`--auth-key` or `--auth-public-key`). When on,
a caller proves who it is with a JWT whose claim `hub` holds its grants:

    {"sub": "ana", "exp": 1767225600,
     "hub": {"subscribe": ["chat", "acme_*"], "publish": ["chat"]}}

A grant is a stream name or a glob where `*` stands for any run of characters, and `{sub}`
for the token's own `sub` (`"inbox_{sub}"`: each user their own; a `sub` that could not be
part of a name, `*` in it for one, makes such a pattern match nothing). Public
streams (`public=True` in code, or `--public PATTERN`) may be read without a token; every other
stream needs a subscribe grant, and publishing always needs a publish grant.

Every decision is made once per request, before anything opens: an `Access` is one caller's
view of the hub, made from the request's token (`Auth.access`), and asked by the parse step,
the catalog and the publish route. A token is verified once per request; the last
`RECENT_TOKENS` verified are remembered until they expire, so that a publisher that sends the
same token with every POST pays for the signature once, not each time (a subscriber holds
only its token's expiry, and its `Principal` if a stream takes it). Nothing here does I/O:
the key comes in as bytes. Query tokens are kept out of the logs (`redact`,
`RedactTokens`).
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import jwt
from starlette.requests import cookie_parser

from .errors import RequestError


class Definition(Protocol):
    """What authorization needs of a stream (`hub.registry.Definition`)."""

    @property
    def name(self) -> str: ...

    @property
    def public(self) -> bool: ...

    @property
    def keyed(self) -> bool: ...


__all__ = [
    "COOKIE",
    "QUERY_PARAMETER",
    "Access",
    "Auth",
    "AuthConfigError",
    "Principal",
    "RedactTokens",
    "redact",
    "redact_logs",
]

COOKIE = "hub_token"
QUERY_PARAMETER = "access_token"
# The shortest HS256 secret accepted: RFC 7518 asks for a key as long as the hash (256 bits).
MIN_SECRET_BYTES = 32
# Verified tokens remembered (a kilobyte or so each), the oldest dropped first.
RECENT_TOKENS = 256
# A grant pattern's longest form, and the most patterns a token may carry per action.
MAX_PATTERN_LENGTH = 256
MAX_PATTERNS = 256
_PATTERN_SYNTAX = re.compile(r"[A-Za-z0-9_~*/{}.-]+")
# A key's text, in a keyed topic's name `family/key`: 1 to 128 of A-Z a-z 0-9 _ - ~, never in
# need of quoting, in a cursor or a URL. It is also what `{sub}` may stand for in a grant: it
# can neither widen a pattern (no `*`) nor step out of a name.
KEY_PATTERN = re.compile(r"[A-Za-z0-9_~-]{1,128}")


class AuthConfigError(ValueError):
    """A key or an authorization setting that cannot be used; the message says which."""


@dataclass(frozen=True, slots=True, eq=False)
class Principal:
    """The verified caller: its `sub`, every claim of its token, and its grants.

    A generated stream receives it by declaring a parameter typed `Principal | None` (None
    when the caller sent no token, or authorization is off) or `Principal` (the stream then
    refuses callers without a token, with a 401). In tests: `Principal(sub="ana")`.
    """

    sub: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    subscribe: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    # When the token stops being accepted (`exp` plus the leeway), as a Unix time; None if
    # it carries no `exp`.
    expires: float | None = None

    def __post_init__(self) -> None:
        # Read-only, so that a plugin cannot change what another subscription is told.
        object.__setattr__(self, "claims", MappingProxyType(dict(self.claims)))
        object.__setattr__(self, "subscribe", tuple(self.subscribe))
        object.__setattr__(self, "publish", tuple(self.publish))

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any], leeway: float = 0.0) -> Principal:
        """The principal a token with these (verified) claims stands for; a `ValueError`
        names what is wrong with its `sub` or its `hub` claim."""
        sub = claims.get("sub")
        if sub is not None and not isinstance(sub, str):
            raise _TokenError('the claim "sub" must be a string')
        subscribe, publish = _grants(claims)
        exp = claims.get("exp")
        expires = float(exp) + leeway if isinstance(exp, int | float) else None
        return cls(sub, claims, subscribe, publish, expires)

    def may_subscribe(self, name: str, *, keyed: bool = False) -> bool:
        """Whether a grant of this caller lets it read the stream `name` (with `keyed`: some
        topic `name/<key>` of the keyed family `name`)."""
        return self._granted(self.subscribe, name, keyed)

    def may_publish(self, name: str, *, keyed: bool = False) -> bool:
        """Whether a grant of this caller lets it publish to the topic `name` (with `keyed`:
        to some topic of the family `name`)."""
        return self._granted(self.publish, name, keyed)

    def _granted(self, grants: tuple[str, ...], name: str, keyed: bool = False) -> bool:
        patterns = _expanded(grants, self.sub)
        if keyed:
            return any(_reaches(pattern, name) for pattern in patterns)
        return bool(patterns) and _matcher(patterns)(name) is not None

    def __repr__(self) -> str:
        return f"Principal(sub={self.sub!r}, subscribe={self.subscribe}, publish={self.publish})"


@functools.lru_cache(maxsize=1024)
def _expanded(patterns: tuple[str, ...], sub: str | None) -> tuple[str, ...]:
    """The patterns with `{sub}` standing for the caller's `sub` (`"inbox_{sub}"`); a
    pattern with `{sub}` matches nothing when the `sub` is not a valid key."""
    if not any("{sub}" in pattern for pattern in patterns):
        return patterns
    if sub is None or not KEY_PATTERN.fullmatch(sub):
        return tuple(pattern for pattern in patterns if "{sub}" not in pattern)
    return tuple(pattern.replace("{sub}", sub) for pattern in patterns)


@functools.lru_cache(maxsize=1024)
def _matcher(patterns: tuple[str, ...]) -> Any:
    """One compiled regular expression for a set of grant patterns (`*` is any run).

    fnmatch's translation, since a pattern holds no `?` nor `[` (`_PATTERN_SYNTAX`): it
    matches in linear time however many stars a pattern has, where a plain `.*` per star
    could backtrack for ever on a pattern like `a*a*a*a*a*a*b`."""
    return re.compile("|".join(fnmatch.translate(p) for p in patterns)).match


def _reaches(pattern: str, family: str) -> bool:
    """Whether `pattern` matches some topic `family/<key>` of a keyed family: it starts like
    `family/`, up to a `*` (`room/*`, `ro*`, `*`) or followed by a key (`room/lobby`)."""
    prefix = family + "/"
    for index, char in enumerate(pattern):
        if char == "*" or index == len(prefix):
            return True
        if char != prefix[index]:
            return False
    return False  # it ends before a key: `room/` or `room` names no topic of the family


def _grants(claims: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The `hub` claim's subscribe and publish patterns, or a TokenError naming the fault."""
    grants = claims.get("hub")
    if grants is None:
        return (), ()
    if not isinstance(grants, dict):
        raise _TokenError(
            'the claim "hub" must be an object: {"subscribe": [patterns], "publish": [patterns]}'
        )
    unknown = sorted(set(grants) - {"subscribe", "publish"})
    if unknown:
        raise _TokenError(
            f'the claim "hub" has unknown keys {unknown}; it takes "subscribe" and "publish"'
        )
    found = []
    for action in ("subscribe", "publish"):
        patterns = grants.get(action, [])
        if not isinstance(patterns, list) or len(patterns) > MAX_PATTERNS:
            raise _TokenError(
                f'"hub.{action}" must be a list of at most {MAX_PATTERNS} stream names or '
                'globs, e.g. ["chat", "acme_*"]'
            )
        for pattern in patterns:
            if not (
                isinstance(pattern, str)
                and len(pattern) <= MAX_PATTERN_LENGTH
                and _PATTERN_SYNTAX.fullmatch(pattern)
            ):
                raise _TokenError(
                    f'"hub.{action}" holds {str(pattern)[:80]!r}: a pattern is a stream name or '
                    f"a glob with '*', of letters, digits and _ - ~ / . {{ }}, "
                    f"{MAX_PATTERN_LENGTH} characters at most"
                )
        found.append(tuple(patterns))
    return found[0], found[1]


class _TokenError(ValueError):
    """A token that does not verify; the message says why, without the token."""


def unauthorized(message: str, *, token_sent: bool) -> RequestError:
    """A 401: no token where one is needed, or one that does not verify."""
    challenge = "Bearer"
    if token_sent:
        description = message.replace("\\", "").replace('"', "'")
        challenge = f'Bearer error="invalid_token", error_description="{description}"'
    return RequestError(401, "unauthorized", message, challenge=challenge)


def forbidden(message: str, streams: Sequence[str]) -> RequestError:
    """A 403: a valid token without the grant for `streams`."""
    return RequestError(
        403,
        "forbidden",
        message,
        challenge='Bearer error="insufficient_scope"',
        streams=list(streams),
    )


class Auth:
    """The hub's authorization: its key and checks, and which streams are public. Without a
    key (`Auth()`) it is off: everyone may do everything."""

    def __init__(
        self,
        *,
        key: bytes | None = None,
        public_key: bytes | None = None,
        audience: str = "",
        issuer: str = "",
        leeway: float = 5.0,
        public: Iterable[str] = (),
    ) -> None:
        if key is not None and public_key is not None:
            raise AuthConfigError(
                "give one of --auth-key (HS256) and --auth-public-key (RS256, ES256), not both"
            )
        if leeway < 0:
            raise AuthConfigError(f"--auth-leeway must be >= 0 seconds, got {leeway}")
        self.public_patterns = tuple(public)
        for pattern in self.public_patterns:
            if not _PATTERN_SYNTAX.fullmatch(pattern):
                raise AuthConfigError(
                    f"--public {pattern!r} is not a stream name or a glob with '*'"
                )
        self.enabled = key is not None or public_key is not None
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self._key: Any = None
        self.algorithms: list[str] = []
        if key is not None:
            if len(key) < MIN_SECRET_BYTES:
                raise AuthConfigError(
                    f"--auth-key is {len(key)} bytes; an HS256 secret needs at least "
                    f"{MIN_SECRET_BYTES} (make one: python -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))')"
                )
            self._key, self.algorithms = key, ["HS256"]
        elif public_key is not None:
            self._key, self.algorithms = _public_key(public_key)
        self._public_match = _matcher(self.public_patterns) if self.public_patterns else None
        self._recent: dict[str, Principal] = {}
        self._open = Access(self, None)

    def describe(self) -> str:
        if not self.enabled:
            return (
                "off: anyone who reaches the hub may read every stream and publish to every topic"
            )
        checks = [f"{'/'.join(self.algorithms)} tokens"]
        if self.audience:
            checks.append(f"audience {self.audience!r}")
        if self.issuer:
            checks.append(f"issuer {self.issuer!r}")
        checks.append(f"leeway {self.leeway:g} s")
        public = ", ".join(self.public_patterns) or "none by flag"
        return f"on: {', '.join(checks)}; public: {public}"

    def is_public(self, definition: Definition) -> bool:
        """Whether `definition` may be read without a token (a keyed family: some topic of
        it, by a pattern such as `--public 'room/*'`)."""
        if definition.public:
            return True
        if definition.keyed:
            return any(_reaches(pattern, definition.name) for pattern in self.public_patterns)
        return self._public_match is not None and self._public_match(definition.name) is not None

    def unmatched_public(self, definitions: Iterable[Definition]) -> list[str]:
        """The `--public` patterns that match none of `definitions` (most likely a typo)."""
        definitions = list(definitions)
        return [
            pattern
            for pattern in self.public_patterns
            if not any(
                _matcher((pattern,))(d.name) or (d.keyed and _reaches(pattern, d.name))
                for d in definitions
            )
        ]

    def access(self, headers: Iterable[tuple[bytes, bytes]], query_token: str | None) -> Access:
        """The caller's access, from its token: `Authorization: Bearer`, else the cookie
        `hub_token`, else the query parameter `access_token`. Raises a 401 for a token that
        does not verify; with no token at all, the access of an anonymous caller."""
        if not self.enabled:
            return self._open
        token = _token(headers, query_token)
        if token is None:
            return self._open
        return Access(self, self.verify(token))

    def access_for(self, principal: Principal | None) -> Access:
        """The access of a caller already known (`hub.testing`, an app's own route)."""
        return Access(self, principal)

    def verify(self, token: str) -> Principal:
        """The principal of a valid token, or a 401 saying what is wrong with it."""
        known = self._recent.get(token)
        if known is not None:
            if known.expires is None or time.time() < known.expires:
                return known
            del self._recent[token]
        try:
            principal = self._decode(token)
        except _TokenError as exc:
            raise unauthorized(str(exc), token_sent=True) from None
        if len(self._recent) >= RECENT_TOKENS:
            del self._recent[next(iter(self._recent))]
        self._recent[token] = principal
        return principal

    def _decode(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self.algorithms,
                audience=self.audience or None,
                issuer=self.issuer or None,
                leeway=self.leeway,
                options={"verify_aud": bool(self.audience)},
            )
        except jwt.ExpiredSignatureError:
            raise _TokenError("the token has expired (exp); get a fresh one") from None
        except jwt.ImmatureSignatureError:
            raise _TokenError("the token is not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            raise _TokenError(
                f"the token is not for this hub: its audience (aud) must be {self.audience!r}"
            ) from None
        except jwt.InvalidIssuerError:
            raise _TokenError(
                f"the token is from another issuer: its iss must be {self.issuer!r}"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise _TokenError(f"the token lacks the claim {exc.claim!r}") from None
        except jwt.InvalidSignatureError:
            raise _TokenError("the token's signature does not verify") from None
        except jwt.InvalidAlgorithmError:
            raise _TokenError(
                f"the token is signed with an algorithm this hub does not accept; it accepts "
                f"{', '.join(self.algorithms)}"
            ) from None
        except jwt.InvalidTokenError as exc:  # malformed: not three parts, bad base64, ...
            raise _TokenError(f"the token is malformed: {exc}") from None
        return Principal.from_claims(claims, self.leeway)


def _public_key(pem: bytes) -> tuple[Any, list[str]]:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise AuthConfigError(
            f"--auth-public-key is not a PEM public key (BEGIN PUBLIC KEY): {exc}"
        ) from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise AuthConfigError(
                f"--auth-public-key: an RSA key of {key.key_size} bits; use 2048+"
            )
        return key, ["RS256"]
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key, ["ES256"]
    raise AuthConfigError(
        "--auth-public-key must be an RSA key (RS256) or an EC P-256 key (ES256), "
        f"got {type(key).__name__}"
    )


def _token(headers: Iterable[tuple[bytes, bytes]], query_token: str | None) -> str | None:
    """The request's token, from the first place that has one; "" for a header or cookie
    that is present but empty (a token sent, and malformed)."""
    cookie = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer":
                return credentials.strip()
        elif name == b"cookie" and cookie is None:
            cookie = cookie_parser(value.decode("latin-1")).get(COOKIE)
    if cookie is not None:
        return cookie
    return query_token


@dataclass(frozen=True, slots=True)
class Access:
    """One caller's view of the hub: who it is, and what it may see, read and publish."""

    auth: Auth | None
    principal: Principal | None

    @property
    def expires(self) -> float | None:
        """When the caller's token stops being accepted (Unix time), if it ever does."""
        return self.principal.expires if self.principal is not None else None

    def may_subscribe(self, definition: Definition) -> bool:
        auth = self.auth
        if auth is None or not auth.enabled or auth.is_public(definition):
            return True
        principal = self.principal
        return principal is not None and principal.may_subscribe(
            definition.name, keyed=definition.keyed
        )

    def may_publish(self, definition: Definition) -> bool:
        auth = self.auth
        if auth is None or not auth.enabled:
            return True
        principal = self.principal
        return principal is not None and principal.may_publish(
            definition.name, keyed=definition.keyed
        )

    def sees(self, definition: Definition) -> bool:
        """Whether the catalog shows it to this caller: it may read it or publish to it."""
        return self.may_subscribe(definition) or self.may_publish(definition)

    def check_subscribe(self, definitions: Sequence[Definition]) -> None:
        """Raise a 401 or a 403 unless this caller may read every one of `definitions`."""
        refused = [d.name for d in definitions if not self.may_subscribe(d)]
        if not refused:
            return
        listed = ", ".join(repr(name) for name in refused)
        if self.principal is None:
            raise unauthorized(
                f"stream {listed} needs a token: send it as 'Authorization: Bearer <token>', "
                f"the cookie {COOKIE!r}, or the query parameter {QUERY_PARAMETER!r}",
                token_sent=False,
            )
        raise forbidden(f"the token grants no subscribe to {listed}", refused)

    def check_publish(self, definition: Definition) -> None:
        """Raise a 403 unless this caller may publish to `definition` (a 401 comes first,
        from `require_token`)."""
        if not self.may_publish(definition):
            raise forbidden(
                f"the token grants no publish to {definition.name!r}", [definition.name]
            )

    def require_token(self, action: str) -> None:
        """Raise a 401 if authorization is on and this caller sent no token."""
        if self.auth is not None and self.auth.enabled and self.principal is None:
            raise unauthorized(
                f"{action} needs a token with a grant: send it as 'Authorization: Bearer "
                f"<token>' (or the cookie {COOKIE!r})",
                token_sent=False,
            )


# `access_token=...` in a query string or a request line, however its key is written.
_QUERY_TOKEN = re.compile(r"((?:^|[?&;])access(?:_|%5f)token=)[^&;\s\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` (a query string, a request line) with any query token replaced by `[redacted]`."""
    if "token" not in text.lower():
        return text
    return _QUERY_TOKEN.sub(r"\1[redacted]", text)


class RedactTokens(logging.Filter):
    """Takes query tokens out of log records (uvicorn's access log writes the request target,
    query string included): `access_token=[redacted]`."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, str) and "token" in a for a in args):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in args)
        if isinstance(record.msg, str) and "token" in record.msg:
            record.msg = redact(record.msg)
        return True


def redact_logs(*names: str) -> None:
    """Install `RedactTokens` on the loggers `names`, once each."""
    for name in names:
        target = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in target.filters):
            target.addFilter(RedactTokens())
