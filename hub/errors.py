"""The one shape of every refusal: `RequestError`, answered as a JSON error with its status."""

from __future__ import annotations

from typing import Any

__all__ = ["RequestError"]


class RequestError(Exception):
    """A request the hub refuses before streaming: its HTTP status and a JSON-able body.

    `retry_after` (seconds) is sent as `Retry-After`; `load` marks a refusal for load (a
    limit, or shutdown), which an `EventSource` gets as `hub.busy` in a 200, since it gives
    up for good on any other status; `challenge` is sent as `WWW-Authenticate` (a 401 or 403).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        load: bool = False,
        challenge: str | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.load = load
        self.challenge = challenge
        self.details = details

    def body(self) -> dict[str, Any]:
        error = {"code": self.code, "message": self.message, **self.details}
        if self.retry_after is not None:
            error["retry_after"] = self.retry_after
        return {"error": error}

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(self.retry_after)))
        if self.challenge is not None:
            headers["WWW-Authenticate"] = self.challenge
        return headers
