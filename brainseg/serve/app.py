"""The seg-serve deployment: one Ray Serve replica that loads the ensemble once and answers HTTP.

Routes (plain Starlette requests and responses; see docs/serve.md):

- `POST /v1/segment`: a PNG/TIFF/JPEG slice or a NIfTI volume in, the mask `seg-run` writes for
  it out (or JSON with `?format=json` / `Accept: application/json`).
- `GET /healthz`: 200 once the model is loaded, 503 while it loads or after it failed to.
- `GET /v1/model`: what is served (artifacts, precision, backend, input, threshold, batching).
- `GET /v1/stats`: this replica's request counts and the batch sizes it actually ran.

Each request is decoded and checked on its own (`brainseg.serve.payloads`); its slices, already
at the graph's input size, then join Ray Serve's `serve.batch` queue, and each batch is stacked
and run with one `backend.infer` on the replica's inference thread. How long a new batch waits
to fill (Ray's `batch_wait_timeout_s`, set before each request joins) depends on the replica:

- idle (nothing queued or running): no wait, so a lone client pays no batching delay;
- a batch running: until the model is expected to have run every slice handed to it so far (the
  slices in hand times a running average of the time per slice, from the running batch's start),
  and at least `batch_wait_ms`. Ray Serve closes a batch when its wait ends even while the model
  is busy, and a closed batch can only queue; closing it when the model is due to be free costs
  no latency and lets it take in every request that arrives meanwhile, up to `max_batch`;
- otherwise (slices queued, none running yet): `batch_wait_ms`.

The model loads on that same thread after the replica starts (the constructor returns at once),
so `/healthz` can say 503 while it loads. This module needs Starlette (which ray[serve] brings) and
imports `ray` only inside the replica; `brainseg.serve.service` imports it after checking that
ray[serve] is installed. It never imports torch, `brainseg.export` or `brainseg.train`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from brainseg.runtime.io.scans import ScanData
from brainseg.runtime.segmenter import Segmenter
from brainseg.serve import payloads
from brainseg.serve.options import ServeOptions
from brainseg.serve.payloads import JSON, RequestError

log = logging.getLogger("brainseg.serve")
ROUTES = {"/v1/segment": ("POST", "_segment"), "/healthz": ("GET", "_healthz"), "/v1/model": ("GET", "_describe"),
          "/v1/stats": ("GET", "_report_stats")}


@dataclass(frozen=True)
class _Model:
    segmenter: Segmenter
    sha256: str  # of the manifest as loaded: names the model in every answer


class _Stats:
    """Requests by HTTP status and the sizes (in slices) of the batches run, for /v1/stats."""

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.batch_sizes: Counter[int] = Counter()

    def report(self, replica: str) -> dict:
        return {"replica": replica, "requests": {str(k): v for k, v in sorted(self.statuses.items())},
                "batches": sum(self.batch_sizes.values()),
                "slices": sum(size * count for size, count in self.batch_sizes.items()),
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "largest_batch": max(self.batch_sizes, default=0)}


class SegmentationService:
    """One replica: the ensemble loaded once, slices batched across requests, HTTP answered.

    Made a Ray Serve deployment by `brainseg.serve.service.build_application`; `artifacts` is an
    artifacts folder readable where the replica runs.
    """

    def __init__(self, artifacts: str, options: ServeOptions) -> None:
        from ray import serve

        self.artifacts = Path(artifacts)
        self.options = options
        # one thread loads the backend and runs every batch: inference is serial, and a CUDA
        # context made while loading stays current on the thread that uses it
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="brainseg-infer")
        self._workdir = Path(tempfile.mkdtemp(prefix="brainseg-serve-"))
        self._stats = _Stats()
        self._queued = 0  # slices handed to the batcher and not yet answered
        self._running_since: float | None = None  # perf_counter() when the running batch began
        self._slice_seconds = 0.0  # running average of batch durations per slice
        self._replica = serve.get_replica_context().replica_id.unique_id  # tells replicas apart in /v1/stats
        self._max_batch = options.batch_size
        self._batcher = serve.batch(max_batch_size=options.batch_size,
                                    batch_wait_timeout_s=options.batch_wait_ms / 1000)(self._run_batch)
        self._loading: Future[_Model] = self._executor.submit(self._load)
        self._loading.add_done_callback(_log_load_failure)

    def _load(self) -> _Model:
        segmenter = Segmenter(self.artifacts, self.options)
        if segmenter.batch_size < self._max_batch:  # a TensorRT engine's profile
            self._max_batch = segmenter.batch_size
            self._batcher.set_max_batch_size(segmenter.batch_size)
        spec = segmenter.spec
        warm_up = np.zeros((1, spec.height, spec.width, spec.channels), spec.dtype)
        segmenter.infer(warm_up)
        started = time.perf_counter()
        segmenter.infer(warm_up)
        self._slice_seconds = time.perf_counter() - started
        log.info("serving %s (ships %s): %s %s (%s); %s", self.artifacts, segmenter.deployed,
                 segmenter.choice.backend, segmenter.precision, segmenter.choice.reason, segmenter.post.describe())
        return _Model(segmenter, segmenter.manifest.sha256)

    async def __call__(self, request: Request) -> Response:
        path = request.url.path[len(request.scope.get("root_path", "")):] or "/"
        route = ROUTES.get(path)
        try:
            if route is None:
                raise RequestError(404, f"no route {path}; try {', '.join(ROUTES)}")
            method, handler = route
            if request.method != method:
                raise RequestError(405, f"{path} takes {method}, not {request.method}", headers={"Allow": method})
            response = await getattr(self, handler)(request)
        except RequestError as err:
            response = _json_error(err.status, err.message)
            response.headers.update(err.headers)
        except Exception as err:  # a bug or a failing backend: answered, logged, and the replica keeps serving
            log.exception("%s %s failed", request.method, path)
            response = _json_error(500, f"internal error ({type(err).__name__}: {err})")
        self._stats.statuses[response.status_code] += 1
        return response

    async def _healthz(self, request: Request) -> Response:
        if not self._loading.done():
            return _json(503, {"status": "loading", "error": "the model is still loading"})
        if self._loading.exception() is not None:
            return _json(503, {"status": "failed", "error": _load_error(self._loading)})
        return _json(200, {"status": "ok"})

    def _model(self) -> _Model:
        """The loaded model, or RequestError 503 while it loads or after it failed to."""
        if not self._loading.done():
            raise RequestError(503, "the model is still loading; poll /healthz")
        if self._loading.exception() is not None:
            raise RequestError(503, _load_error(self._loading))
        return self._loading.result()

    async def _describe(self, request: Request) -> Response:
        model, o = self._model(), self.options
        segmenter = model.segmenter
        return _json(200, {
            "artifacts": str(self.artifacts), "manifest_sha256": model.sha256, "deployed": segmenter.deployed,
            "precision": segmenter.precision, "backend": {**segmenter.describe(), "file": segmenter.choice.file},
            "input": asdict(segmenter.spec), "classes": segmenter.manifest.classes, "threshold": segmenter.threshold,
            "postprocessing": {**segmenter.post.to_dict(), "description": segmenter.post.describe()},
            "batching": {"max_batch": self._max_batch, "batch_wait_ms": o.batch_wait_ms,
                         "replicas": o.replicas},
            "max_body_bytes": o.max_body_bytes, "media_types": list(payloads.MEDIA_KINDS),
        })

    async def _report_stats(self, request: Request) -> Response:
        return _json(200, self._stats.report(self._replica))

    async def _segment(self, request: Request) -> Response:
        model = self._model()
        kind = payloads.body_kind(request.headers.get("content-type"))
        as_json = payloads.wants_json(request.query_params.get("format"), request.headers.get("accept"))
        marks = [time.perf_counter()]
        body = await self._read_body(request)
        marks.append(time.perf_counter())
        data, image = await asyncio.to_thread(payloads.read_body, body, kind, model.segmenter.steps, self._workdir)
        marks.append(time.perf_counter())
        arrays, backend_seconds = await self._infer(image)
        marks.append(time.perf_counter())
        result = await asyncio.to_thread(self._answer, model, data, arrays, as_json)
        marks.append(time.perf_counter())
        headers = {**result.headers, "Server-Timing": _server_timing(marks, backend_seconds)}
        return Response(result.body, media_type=result.media_type, headers=headers)

    async def _read_body(self, request: Request) -> bytes:
        limit = self.options.max_body_bytes
        payloads.check_declared_size(request.headers.get("content-length"), limit)
        chunks: list[bytes] = []
        received = 0
        async for chunk in request.stream():
            received = payloads.add_chunk(chunks, chunk, received, limit)
        return b"".join(chunks)

    async def _infer(self, image: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
        """(S, h, w, C) slices at the graph's size -> (the graph's outputs by name, each (S, K, h, w),
        seconds the backend spent on the batches they rode in).

        Every slice joins the shared batch queue on its own, so a volume fills batches by itself
        and a slice shares them with other clients' slices.
        """
        self._batcher.set_batch_wait_timeout_s(self._batch_wait_s())
        self._queued += len(image)
        try:
            per_slice = await asyncio.gather(*(self._batcher(image[i]) for i in range(len(image))))
        finally:
            self._queued -= len(image)
        arrays = {name: np.stack([outputs[name] for outputs, _ in per_slice]) for name in per_slice[0][0]}
        return arrays, sum(dict(batch for _, batch in per_slice).values())

    def _batch_wait_s(self) -> float:
        """How long a batch opened now may wait for more slices (see the module docstring)."""
        if self._queued == 0:
            return 0.0
        least = self.options.batch_wait_ms / 1000
        if self._running_since is None:
            return least
        ahead = self._queued * self._slice_seconds  # every slice handed over before this one, at the recent rate
        return max(least, self._running_since + ahead - time.perf_counter())

    async def _run_batch(self, slices: list[np.ndarray]) -> list[tuple[dict[str, np.ndarray], tuple[int, float]]]:
        """Ray Serve's batch handler: N slices (h, w, C) -> per slice, its (K, h, w) outputs by name and
        (batch number, backend seconds); one backend.infer for the N."""
        batch = np.stack(slices)  # (N, h, w, C)
        self._running_since = started = time.perf_counter()
        try:
            arrays, seconds = await asyncio.get_running_loop().run_in_executor(self._executor, self._infer_now, batch)
        finally:
            self._running_since = None
        self._slice_seconds = 0.7 * self._slice_seconds + 0.3 * (time.perf_counter() - started) / len(slices)
        self._stats.batch_sizes[len(slices)] += 1
        number = sum(self._stats.batch_sizes.values())
        return [({name: array[i] for name, array in arrays.items()}, (number, seconds)) for i in range(len(slices))]

    def _infer_now(self, batch: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
        started = time.perf_counter()
        outputs = self._loading.result().segmenter.infer(batch)  # arrays of our own (Segmenter.infer)
        return outputs, time.perf_counter() - started

    @staticmethod
    def _answer(model: _Model, data: ScanData, arrays: dict[str, np.ndarray], as_json: bool) -> payloads.Answer:
        prediction = model.segmenter.steps.finish_scan(data, arrays)
        return payloads.answer(data, prediction, as_json=as_json, manifest_sha256=model.sha256)

    def __del__(self) -> None:
        """Ray Serve calls this when the replica stops: free the backend and the body files' folder."""
        loading = getattr(self, "_loading", None)  # absent when the constructor itself failed
        if loading is None:
            return
        if loading.done() and loading.exception() is None:
            self._executor.submit(loading.result().segmenter.close)
        self._executor.shutdown(wait=True)
        shutil.rmtree(self._workdir, ignore_errors=True)


def _server_timing(marks: list[float], backend_seconds: float) -> str:
    """Server-Timing (W3C) in ms: body, read, queue, backend, answer, total; the rest of a client's
    latency is HTTP and Ray Serve's proxy."""
    body, read, infer, answer = (float(ms) for ms in np.diff(marks) * 1000)
    backend = backend_seconds * 1000
    phases = {"body": body, "read": read, "queue": infer - backend, "backend": backend, "answer": answer,
              "total": (marks[-1] - marks[0]) * 1000}
    return ", ".join(f"{name};dur={ms:.2f}" for name, ms in phases.items())


def _json(status: int, record: dict) -> Response:
    return Response(json.dumps(record).encode(), status_code=status, media_type=JSON)


def _json_error(status: int, message: str) -> Response:
    return Response(payloads.error_body(message), status_code=status, media_type=JSON)


def _load_error(loading: Future) -> str:
    err = loading.exception()
    return f"the model failed to load: {type(err).__name__}: {err}"


def _log_load_failure(loading: Future) -> None:
    if loading.exception() is not None:
        log.error("%s", _load_error(loading), exc_info=loading.exception())

