"""seg-serve's default mode: the ASGI app under uvicorn in this one process, with a `LocalBatcher`.

No cluster, no proxy, no second process: the event loop answers HTTP and batches slices, one
thread runs the backend, and decoding runs on worker threads. `embedded_server` builds the
uvicorn server (not started); `brainseg.serve.service.running_service` starts it on a thread.

uvicorn settings that are part of the hardening (docs/security.md): no `Server` header, no access
log of its own (the app logs one line per request, without client-supplied names), keep-alive
connections closed after `KEEP_ALIVE_S` idle, at most `4 x --max-uploads` connections and tasks
(uvicorn answers 503 beyond). The protocol class adds what uvicorn lacks: `HEADER_TIMEOUT_S` to
send a request's line and headers, and at most `MAX_HEADER_BYTES` of them (431 beyond), whichever
HTTP parser uvicorn runs (httptools or h11).
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from brainseg.errors import require
from brainseg.serve.app import build_app
from brainseg.serve.batching import LocalBatcher
from brainseg.serve.core import SegmentationService
from brainseg.serve.errors import error_body
from brainseg.serve.options import ServeOptions

KEEP_ALIVE_S = 5
MAX_HEADER_BYTES = 16 * 1024
HEADER_TIMEOUT_S = 10.0


def embedded_service(artifacts: str | Path, options: ServeOptions) -> SegmentationService:
    """The service with its in-process batcher (the model starts loading on its thread)."""
    service = SegmentationService(artifacts, options)
    batcher = LocalBatcher(service.run_batch, max_batch=lambda: service.max_batch,
                           wait_s=options.batch_wait_ms / 1000, on_batch=service.stats.record_batch,
                           decoding=lambda: service.decoding)
    service.submit = batcher.submit
    return service


def embedded_server(service: SegmentationService, options: ServeOptions):
    """A `uvicorn.Server` for `service`'s app on `options.host:port` (not started)."""
    uvicorn = require("uvicorn", "serve")
    config = uvicorn.Config(
        build_app(service, "embedded"), host=options.host, port=options.port, log_level="warning",
        access_log=False, server_header=False, lifespan="off", timeout_keep_alive=KEEP_ALIVE_S,
        limit_concurrency=4 * options.max_uploads, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_graceful_shutdown=5, http=_protocol_with_header_timeout())
    return uvicorn.Server(config)


def _protocol_with_header_timeout():
    """uvicorn's HTTP protocol class, closing a connection that has not sent a request's line and
    headers within HEADER_TIMEOUT_S of opening or of its last answer (slow-header clients)."""
    base = _auto_protocol()

    class HeaderTimeout(base):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._header_timer = None
            self._arm()

        def _arm(self) -> None:
            loop = asyncio.get_running_loop()
            self._header_timer = loop.call_later(HEADER_TIMEOUT_S, self._headers_too_slow)
            self._header_bytes = 0

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if getattr(self, "_header_timer", None) is None:  # headers complete (or closed): a body's bytes
                return
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
                self._disarm()
                self.transport.write(_headers_too_large())
                self.transport.close()

        def _headers_too_slow(self) -> None:
            if self.cycle is None or self.cycle.response_complete:  # no request under way: nothing arrived
                self.transport.close()

        def on_headers_complete(self, *args) -> None:  # httptools
            self._disarm()
            super().on_headers_complete(*args)

        def handle_events(self) -> None:  # h11: events are handled here
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._disarm()
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _disarm(self) -> None:
            if getattr(self, "_header_timer", None) is not None:
                self._header_timer.cancel()
                self._header_timer = None

    return HeaderTimeout


def _headers_too_large() -> bytes:
    """A whole 431 answer, written by the protocol itself (the app never saw the request)."""
    body = error_body(f"the request line and headers are over {MAX_HEADER_BYTES} bytes", uuid.uuid4().hex[:16])
    head = (f"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode() + body


def _auto_protocol():
    """The protocol class uvicorn's "auto" picks: httptools when installed, else h11."""
    try:
        import httptools  # noqa: F401
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        return HttpToolsProtocol
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol
        return H11Protocol
