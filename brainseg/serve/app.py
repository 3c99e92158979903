"""seg-serve's HTTP face: one ASGI app (FastAPI, with its OpenAPI page) over a `SegmentationService`.

The same app runs in both modes: under uvicorn in this process (`brainseg.serve.embedded`) and
in each Ray Serve replica (`brainseg.serve.ray_replica`), so routes, answers, headers and limits are
identical. Routes (docs/serve.md):

- `POST /v1/segment`: a PNG/TIFF/JPEG slice or a NIfTI volume in, the mask `seg-run` writes for
  it out (or JSON with `?format=json` / `Accept: application/json`).
- `GET /healthz`: 200 once the model is loaded, 503 while it loads or after it failed to.
- `GET /v1/model`: what is served, named by its manifest's sha256; the limits in force.
- `GET /v1/stats`: request counts by status, the batch sizes actually run, and the uploads and body
  bytes held now (per replica).
- `GET /docs`, `GET /openapi.json`: FastAPI's OpenAPI page and schema.

The outermost layer (`_Edge`, plain ASGI) gives every request an id (a client's well-formed
`X-Request-ID`, else a new one), answers in the `X-Request-ID` header, turns any exception that
escapes into `{"error": "internal error", "request_id": ...}` with status 500 (the traceback goes
to the log, never to the client), marks every answer `Cache-Control: no-store`, counts statuses
and logs one line per request: its id, route, status, declared body size and time. Nothing from
the client's headers but the id is logged.

This module imports FastAPI (`pip install 'brainseg[serve]'`); `brainseg.serve.service` checks
that it is installed before importing it.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from brainseg import __version__
from brainseg.serve.core import SegmentationService
from brainseg.serve.errors import RequestError, error_body
from brainseg.serve.formats import MEDIA_TYPES

log = logging.getLogger("brainseg.serve")
access = logging.getLogger("brainseg.serve.access")
JSON = "application/json"
ROUTES = ("/v1/segment", "/healthz", "/v1/model", "/v1/stats", "/docs", "/openapi.json")
INTERNAL = "internal error; the service logged it under this request id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

_SEGMENT_DOC = {
    "requestBody": {"required": True, "content": {
        **{media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA_TYPES}}},
    "responses": {"200": {"description": "The mask seg-run writes for this scan (PNG for a slice, .nii.gz for a "
                                         "volume), or JSON with ?format=json; its numbers in X-* headers.",
                          "content": {"image/png": {}, "application/gzip": {}, JSON: {}}},
                  **{str(status): {"description": why} for status, why in (
                      (400, "empty body, bad format, malformed Content-Length, client gone mid-body"),
                      (408, "the body did not arrive within --body-timeout-s"),
                      (413, "over --max-body-mb, --max-pixels or --max-voxels"),
                      (415, "Content-Type not accepted, or not what the body's magic bytes say"),
                      (422, "a body the runtime's readers refuse, with their reason"),
                      (503, "model loading or failed to load; too many uploads (Retry-After)"))}},
}


def build_app(service: SegmentationService, mode: str):
    """The ASGI app serving `service` ("embedded" or "ray" in /v1/model)."""
    app = FastAPI(title="brainseg seg-serve", version=__version__, redoc_url=None, swagger_ui_oauth2_redirect_url=None,
                  description="Brain-MRI tumour segmentation: POST a slice or a NIfTI volume, get its mask. "
                              "See docs/serve.md and docs/security.md.")

    def answer(status: int, record: dict, headers: dict | None = None) -> Response:
        return Response(json.dumps(record).encode(), status_code=status, media_type=JSON, headers=headers)

    @app.post("/v1/segment", openapi_extra=_SEGMENT_DOC, summary="Segment one slice or one NIfTI volume")
    async def segment(request: Request) -> Response:
        result = await service.segment(request)
        return Response(result.body, media_type=result.media_type, headers=result.headers)

    @app.get("/healthz", summary="200 once the model is loaded; 503 while it loads or if it failed")
    async def healthz() -> Response:
        return answer(*service.health())

    @app.get("/v1/model", summary="What is served, by manifest sha256, and the limits in force")
    async def describe() -> Response:
        return answer(200, service.describe(mode))

    @app.get("/v1/stats", summary="Requests by status, the batch sizes run and the uploads in progress, "
                                   "for this process or replica")
    async def stats() -> Response:
        admission = service.admission
        return answer(200, {**service.stats.report(service.replica), "uploads_in_progress": admission.uploads,
                            "buffered_bytes": admission.buffered})

    @app.exception_handler(RequestError)
    async def refused(request: Request, err: RequestError) -> Response:
        return Response(error_body(err.message, _id(request.scope)), status_code=err.status, media_type=JSON,
                        headers=err.headers)

    @app.exception_handler(HTTPException)
    async def routing(request: Request, err: HTTPException) -> Response:
        messages = {404: f"no route here; the routes are {', '.join(ROUTES)}",
                    405: f"this route takes {(err.headers or {}).get('Allow', 'another method')}"}
        message = messages.get(err.status_code, "the request was refused")
        return Response(error_body(message, _id(request.scope)), status_code=err.status_code, media_type=JSON,
                        headers=err.headers)

    @app.exception_handler(Exception)
    async def failed(request: Request, err: Exception) -> Response:  # Starlette logs it and re-raises it to _Edge
        return Response(error_body(INTERNAL, _id(request.scope)), status_code=500, media_type=JSON)

    return _Edge(app, service)


def _id(scope: dict) -> str:
    return scope.get("state", {}).get("request_id", "-")


class _Edge:
    """The outer ASGI layer: request ids, the 500 answer, status counts and the log line."""

    def __init__(self, app, service: SegmentationService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope) or uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        started, status = time.perf_counter(), [0]
        extra = [(b"x-request-id", request_id.encode()), (b"cache-control", b"no-store")]  # answers hold patient data

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request %s failed", request_id)  # the traceback stays in the log
            if status[0] == 0:  # nothing sent yet: answer it
                status[0] = 500
                body = error_body(INTERNAL, request_id)
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode()),
                                        *extra]})
                await send({"type": "http.response.body", "body": body})
        finally:
            self.service.stats.statuses[status[0]] += 1
            path = scope.get("path", "")
            route = path if path in ROUTES else "other"
            access.info("%s %s %s %d %s bytes %.1f ms", request_id, scope.get("method", "-"), route, status[0],
                        _content_length(scope), (time.perf_counter() - started) * 1000)


def _incoming_id(scope: dict) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _REQUEST_ID.fullmatch(text) else None
    return None


def _content_length(scope: dict) -> str:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            text = value.decode("latin-1")
            return text if text.isdigit() and len(text) < 16 else "?"
    return "-"


__all__ = ["build_app", "RequestError"]
