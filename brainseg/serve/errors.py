"""The refusals of seg-serve: an HTTP status and a one-line reason, answered as JSON.

Every error answer, in both modes, is `{"error": "<one line>", "request_id": "<id>"}` with the
same id in the `X-Request-ID` header and in the service's log line for that request.
"""

from __future__ import annotations

import json


class RequestError(Exception):
    """A request the service refuses: an HTTP status and a one-line reason for `{"error": ...}`."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_body(message: str, request_id: str) -> bytes:
    """`{"error": message, "request_id": request_id}` as one line of JSON."""
    return json.dumps({"error": " ".join(message.split()), "request_id": request_id}).encode()
